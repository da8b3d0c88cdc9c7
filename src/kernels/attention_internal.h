#pragma once
// Shared by the attention front ends (attention.cpp, quant_attention.cpp); not a public interface.
#include <torch/torch.h>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"
#include "kernels/decode_splits.h"

namespace mha2mla::kernels {

Operand operand(const torch::Tensor& t);  // [B, H, rows, dim], last dim contiguous
// Split-KV decoding: `a` filled except `out`; returns [B, Hq, T, Dv] in opt's dtype.
torch::Tensor run_decode(AttnArgs& a, const AttnKernels& kern, const torch::TensorOptions& opt);

}  // namespace mha2mla::kernels
