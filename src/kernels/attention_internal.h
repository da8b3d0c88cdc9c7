#pragma once
// Shared by the attention front ends (attention.cpp, quant_attention.cpp); not a public interface.
#include <torch/torch.h>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"
#include "kernels/decode_splits.h"

namespace mha2mla::kernels {

Operand operand(const torch::Tensor& t);  // [B, H, rows, dim], last dim contiguous
// The arguments of flash/decode_attention (fn: which, for errors) and of mla_decode_attention, checked as they
// check them, over tensors whose last dim is contiguous and `valid` contiguous; `out` is left unset. The
// tensors must outlive the arguments.
AttnArgs attention_args(const char* fn, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& valid, int64_t start, int64_t window, double scale);
AttnArgs mla_decode_args(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                         const torch::Tensor& k_r, const torch::Tensor& valid, int64_t start, int64_t window,
                         double scale);
// Split-KV decoding: `a` filled except `out`; returns [B, Hq, T, Dv] in opt's dtype.
torch::Tensor run_decode(AttnArgs& a, const AttnKernels& kern, const torch::TensorOptions& opt);

}  // namespace mha2mla::kernels
