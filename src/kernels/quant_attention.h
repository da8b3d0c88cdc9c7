#pragma once
// Decode attention over a quantized K/V cache, dequantized in registers (never written back).
//
// Layout of one quantized buffer (K or V) whose tokens have shape [H, D] (kernels/cache_format.h names the cache
// types that use it):
//   data  uint8 [B, H, >= n_quant, ceil(D * bits / 8)];
//     Uint codes: value i of a row sits in byte i / (8 / bits) at bit offset (i % (8 / bits)) * bits, low bits
//                 first, bits 2, 4 or 8; x ~= code * scale + zero, code in [0, 2^bits - 1], scale and zero f16;
//     E4M3 codes: one FP8 E4M3 byte per value; x ~= e4m3(code) * scale, scale f32, no zero point (zero undefined);
//   scales (and zeros) per token   (per_channel = false): groups of `group` consecutive values along D (the last
//                                  may be shorter), [B, H, >= n_quant, ceil(D / group)];
//                      per channel (per_channel = true, KIVI keys): groups of `group` consecutive slots,
//                                  [B, H, >= n_quant / group, D]; n_quant is a multiple of group.
//   residual [B, H, R, D] in the compute dtype: slots n_quant .. n_quant + R - 1 (the most recent).
// The cache holds S = n_quant + R slots; masking and padding rows as in kernels/attention.h.
#include <torch/torch.h>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"

namespace mha2mla::kernels {

struct QuantizedKV {
  Codes codes = Codes::Uint;
  torch::Tensor data;      // uint8
  torch::Tensor scale;     // Uint: f16; E4M3: f32
  torch::Tensor zero;      // Uint: f16; E4M3: undefined
  torch::Tensor residual;  // [B, H, R, D], R may be 0
  int64_t bits = 8;        // Uint: 2, 4 or 8; E4M3: 8
  int64_t group = 32;
  bool per_channel = false;
  int64_t n_quant = 0;     // slots held in data
};

// [B, H, n_quant + R, D] in the residual's dtype.
torch::Tensor dequantize_reference(const QuantizedKV& kv);

// q [B, Hq, T, D] (small T) against the quantized k and v (same slots, Hkv heads) -> [B, Hq, T, Dv].
torch::Tensor quantized_decode_attention(const torch::Tensor& q, const QuantizedKV& k, const QuantizedKV& v,
                                         int64_t start, const torch::Tensor& valid, int64_t window, double scale,
                                         Variant variant = Variant::Auto);
// Absorbed MLA decode (kernels/attention.h mla_decode_attention) over a quantized latent c (one head:
// [B, 1, S, L]) and quantized rotary keys k_r ([B, Hkv, S, r]); each latent row is dequantized once and
// serves as key and value. q_lat [B, Hq, T, L], q_rope [B, Hq, T, r] -> [B, Hq, T, L].
torch::Tensor quantized_mla_decode_attention(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                             const QuantizedKV& c, const QuantizedKV& k_r, int64_t start,
                                             const torch::Tensor& valid, int64_t window, double scale,
                                             Variant variant = Variant::Auto);
torch::Tensor quantized_mla_decode_reference(const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                                             const QuantizedKV& c, const QuantizedKV& k_r, int64_t start,
                                             const torch::Tensor& valid, int64_t window, double scale);

// attention_reference over the dequantized caches.
torch::Tensor quantized_decode_reference(const torch::Tensor& q, const QuantizedKV& k, const QuantizedKV& v,
                                         int64_t start, const torch::Tensor& valid, int64_t window, double scale);

}  // namespace mha2mla::kernels
