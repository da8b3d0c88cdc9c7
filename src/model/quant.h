#pragma once
// Asymmetric group-wise quantization of cache blocks (the libtorch reference; fused kernels read the same
// layout). A block x [B, H, N, D] becomes:
//   data  uint8 [B, H, N, ceil(D·bits/8)]: value i of a row in byte i / (8/bits), at bit (i mod (8/bits))·bits;
//   scale, zero f16: per token  [B, H, N, ceil(D/G)]  (groups of G channels of one token, the last shorter),
//                    per channel [B, H, N/G, D]       (groups of G tokens of one channel; N a multiple of G).
// x ≈ q·scale + zero with q = round((x − zero)/scale) clamped to [0, 2^bits − 1]; zero = min, scale = (max − min)/(2^bits − 1),
// both rounded to f16 before q is computed, so dequantization uses exactly the stored values. With
// QuantMethod::Hqq the zero is fitted instead (HQQ: half-quadratic splitting under an lp error, p = 0.7, as the
// hqq library does for Hugging Face's quantized cache), the scale staying min-max; the layout is the same.
#include <torch/torch.h>

#include "model/runtime_options.h"

namespace mha2mla::model {

struct QuantBlock {
  torch::Tensor data, scale, zero;
};

int64_t packed_row_bytes(int64_t width, int bits);
int64_t quant_groups(int64_t width, int64_t group);  // per-token groups of one row: ceil(D/G)

QuantBlock quantize(const torch::Tensor& x, int bits, int64_t group, QuantAxis axis,
                    QuantMethod method = QuantMethod::MinMax);
// Back to `dtype`, [B, H, N, width].
torch::Tensor dequantize(const QuantBlock& q, int bits, int64_t group, QuantAxis axis, int64_t width,
                         torch::ScalarType dtype);

// Bytes one token of a [H, D] buffer costs once quantized, scales and zero points included.
double quantized_bytes_per_token(int64_t heads, int64_t width, int bits, int64_t group, QuantAxis axis);

}  // namespace mha2mla::model
