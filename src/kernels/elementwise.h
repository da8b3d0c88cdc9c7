#pragma once
// The small per-token ops of a decoder layer (RMSNorm, SiLU-gated product, rotary embedding), each one pass
// over its data. At decode a layer's matrices are streamed by the GEMV kernel, and these ops, as libtorch
// graphs of 3-8 calls each, cost more in dispatch than in arithmetic. Each fused op rounds to the storage
// type at the same points as its reference, so bf16/f16 results differ from it by at most one unit in the
// last place (f32 accumulation order).
#include <torch/torch.h>

#include "kernels/cpu_features.h"
#include "kernels/elementwise_args.h"

namespace mha2mla::kernels {

// True when the fused ops below may run for x: CPU, f32/bf16/f16, no autograd needed. They run for at most
// 64 rows (tokens times batch: decoding); otherwise, and for prompts, they call their reference.
bool elementwise_applies(const torch::Tensor& x);

// RMSNorm over the last dim: w * to_dtype(x * rsqrt(mean(x^2) + eps)), statistics in f32.
// variant: Auto takes the AVX2 rows where the CPU has AVX2, else the portable loops (Generic); Reference is
// the libtorch graph.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps, Variant variant = Variant::Auto);
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& w, double eps);

// silu(gate) * up (the gated MLP's product): silu computed in f32 and rounded once to the storage type, as
// the CUDA kernels do, then the product rounded. Under autograd and past 64 rows: torch::silu(gate) * up.
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up, Variant variant = Variant::Auto);
torch::Tensor silu_mul_reference(const torch::Tensor& gate, const torch::Tensor& up);

// Rotary embedding, HF's rotate-half form: x [B, H, T, D] (any strides), cos/sin [B, T, D] ->
// x * cos + rotate_half(x) * sin, in x's dtype and layout.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
torch::Tensor rope_reference(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace mha2mla::kernels
