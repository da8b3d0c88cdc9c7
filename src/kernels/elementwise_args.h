#pragma once
// Plain-pointer rows of the fused per-token ops (see attention_args.h for why the instruction-set specific
// files see no libtorch type). Every pointer holds storage type t; arithmetic is f32, rounded to t where the
// libtorch reference rounds (elementwise.h).
#include <cstdint>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {

// The row functions of one variant (cpu_kernels() in cpu_kernels.h picks them).
using SiluMulSpan = void (*)(DType t, const void* g, const void* u, void* y, int64_t n);
using RmsNormRow = void (*)(DType t, const void* x, const void* w, void* y, int64_t D, float eps);

// Rotary embedding of one row of D values, rotate-half form: y[i] = x[i]·cos[i] + rot[i]·sin[i] with
// rot = (−x[D/2..D), x[0..D/2)), each product rounded to t and then their sum. y must not overlap x.
void rope_row(DType t, const void* x, const void* cos, const void* sin, void* y, int64_t D);

namespace generic {  // portable loops, the same roundings as the AVX2 rows below
void silu_mul_span(DType t, const void* g, const void* u, void* y, int64_t n);
void rms_norm_row(DType t, const void* x, const void* w, void* y, int64_t D, float eps);
}  // namespace generic

namespace avx2 {

// y[i] = silu(g[i]) rounded to t, times u[i], rounded to t; i in [0, n).
void silu_mul_span(DType t, const void* g, const void* u, void* y, int64_t n);

// One row of D values: y = w * (x * rsqrt(mean(x^2) + eps) rounded to t), rounded to t; the squares in f32,
// summed in f64.
void rms_norm_row(DType t, const void* x, const void* w, void* y, int64_t D, float eps);

}  // namespace avx2
}  // namespace mha2mla::kernels
