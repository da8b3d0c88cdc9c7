#pragma once
// Plain-pointer description of y = x W^T + b for a few rows of x (see attention_args.h for why the
// instruction-set specific files see no libtorch type).
#include <cstdint>

#include "kernels/attention_args.h"
#include "kernels/scalar_convert.h"

namespace mha2mla::kernels {

struct GemvArgs {
  DType dtype = DType::F32;   // x, W, b and y share it
  int64_t n = 0, in = 0;      // x [n, in] contiguous
  const void* x = nullptr;
  const void* w = nullptr;    // [out, in], rows w_stride elements apart
  int64_t w_stride = 0;
  const void* bias = nullptr; // [out] or null
  void* y = nullptr;          // [n, out] contiguous
  int64_t out = 0;
  const void* residual = nullptr;  // [n, out] contiguous or null: added to the rounded product (y = x W^T + b + r)
};

namespace {  // internal linkage: compiled into files with different instruction sets (scalar_convert.h)
// y[j, o] from its sum of products s: the bias added and the result rounded to the storage type, then the
// residual added and rounded again, as linear() followed by an add rounds.
inline void store_output(const GemvArgs& a, int64_t j, int64_t o, float s) {
  if (a.bias) s += load_elem(a.bias, o, a.dtype);
  if (a.residual) s = round_to_storage(s, a.dtype) + load_elem(a.residual, j * a.out + o, a.dtype);
  store_elem(a.y, j * a.out + o, a.dtype, s);
}
}  // namespace

// Computes output features [o0, o1) for every row of x.
using GemvRows = void (*)(const GemvArgs&, int64_t o0, int64_t o1);

namespace generic { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx512 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx512bf16 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx2 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }

}  // namespace mha2mla::kernels
