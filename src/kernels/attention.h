#pragma once
// Fused attention kernels for CPU inference (no T x S score tensor) and their plain libtorch references.
//
// Masking, shared by every function here: query row t of the T new tokens sits at slot start+t;
// key slot s is visible to it iff
//     s <= start + t                          (causal by slot)
//     and (window <= 0 or s > start + t - window)   (sliding window)
//     and valid[b, s]                         (when valid, [B, S] bool, is given: left padding).
// A query row that sees no key at all (a padding row) gets an all-zero output, never NaN.
// Softmax runs in f32 whatever the storage type; outputs have q's dtype.
//
// CUDA tensors go to the CUDA decode kernels where they are built (see cuda_kernels_built), else to the
// reference. The SIMD variants need the last dim of every operand
// contiguous (other strides are free, so cache views can be passed as they are).
#include <torch/torch.h>

#include "kernels/cpu_features.h"

namespace mha2mla::kernels {

// q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv] -> [B, Hq, T, Dv]; Hq % Hkv == 0, query head h
// reads KV head h / (Hq / Hkv). Tiled with an online softmax: memory O(T * D) per thread.
torch::Tensor flash_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t start,
                              const torch::Tensor& valid, int64_t window, double scale,
                              Variant variant = Variant::Auto);

// Same arguments and result as flash_attention, for few query rows (decode, T = 1 or small): the key
// axis is split across threads so that batch 1 uses every core, then the partial softmaxes are merged.
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               int64_t start, const torch::Tensor& valid, int64_t window, double scale,
                               Variant variant = Variant::Auto);

// decode_attention when g*T is small, flash_attention otherwise.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t start,
                        const torch::Tensor& valid, int64_t window, double scale, Variant variant = Variant::Auto);

// Materialises the [B, Hq, T, S] scores in f32 and applies the rules above.
torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  int64_t start, const torch::Tensor& valid, int64_t window, double scale);

// Absorbed MLA decoding: q_lat [B, Hq, T, L] (q_nope already multiplied through W_uk), q_rope
// [B, Hq, T, r] (or undefined: no RoPE part), the latent cache c [B, S, L] shared by all heads, the
// decoupled RoPE keys k_r [B, Hkv, S, r] (head h reads h / (Hq / Hkv)).
// score = (q_lat . c + q_rope . k_r) * scale; output [B, Hq, T, L] = softmax-weighted sum of c.
torch::Tensor mla_decode_attention(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                                   const torch::Tensor& k_r, int64_t start, const torch::Tensor& valid,
                                   int64_t window, double scale, Variant variant = Variant::Auto);
torch::Tensor mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                                   const torch::Tensor& k_r, int64_t start, const torch::Tensor& valid,
                                   int64_t window, double scale);

// Whether this build has the CUDA decode kernels (src/kernels/cuda, CMake option MHA2MLA_CUDA_KERNELS). CUDA
// tensors go to them in decode_attention and mla_decode_attention (same arguments, same rules); prefill, the
// quantized caches and builds without them take the reference on the device.
bool cuda_kernels_built();
// Which implementation the calling thread's last decode call (decode_attention, mla_decode_attention and
// their quantized forms) ran: "cpu", "cuda" or "reference"; flash_attention on CUDA tensors sets "cuda" too.
// For tests that must know a kernel ran, not its fallback.
const char* last_decode_kernel();

// [B or 1, T, S] bool: which key slots each new token sees (the rules above).
torch::Tensor visibility(int64_t T, int64_t S, int64_t start, const torch::Tensor& valid, int64_t window,
                         torch::Device device);

}  // namespace mha2mla::kernels
