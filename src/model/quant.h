#pragma once
// Quantization of cache blocks into the quantized formats of the cache-format table (kernels/cache_format.h),
// in the layout every decoder reads (kernels/quant_attention.h). A block x [B, H, N, D] becomes data (the codes),
// scale and, for integer codes, zero; groups of G channels of one token (per token) or of G tokens of one channel
// (per channel; N a multiple of G).
//   Int (int8/int4/int2): x ≈ q·scale + zero, q = round((x − zero)/scale) clamped to [0, 2^bits − 1]; zero = min,
//     scale = (max − min)/(2^bits − 1), both rounded to f16 before q is computed, so dequantization uses exactly
//     the stored values. With QuantMethod::Hqq the zero is fitted instead (HQQ: half-quadratic splitting under an
//     lp error, p = 0.7, as the hqq library does for Hugging Face's quantized cache), the scale staying min-max.
//   Fp8 (fp8, fp8-flashmla): x ≈ e4m3(q)·scale, scale = absmax/448 in f32, q the E4M3 code nearest x/scale (ties
//     to even mantissa), no zero point.
#include <torch/torch.h>

#include "model/runtime_options.h"

namespace mha2mla::model {

struct QuantBlock {
  torch::Tensor data, scale, zero;  // zero undefined for E4M3 codes
};

// Fails with one clear message where `method` cannot quantize `type` (hqq fits zero points, which FP8 lacks).
void check_quantizer(CacheType type, QuantMethod method);

// `type` must be quantized (is_quantized); `group` is the format's own where it fixes one.
QuantBlock quantize(const torch::Tensor& x, CacheType type, int64_t group, QuantAxis axis,
                    QuantMethod method = QuantMethod::MinMax);
// Back to `dtype`, [B, H, N, width], through the one reference dequantizer (kernels::dequantize_reference).
torch::Tensor dequantize(const QuantBlock& q, CacheType type, int64_t group, QuantAxis axis, int64_t width,
                         torch::ScalarType dtype);

// The E4M3 code nearest each value of x (f32; |x| beyond 448 saturates), ties to the even code, as uint8.
torch::Tensor e4m3_codes(const torch::Tensor& x);

}  // namespace mha2mla::model
