#pragma once
// Plain-pointer description of y = x W^T + b for a few rows of x (see attention_args.h for why the
// instruction-set specific files see no libtorch type).
#include <cstdint>

#include "kernels/attention_args.h"

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
};

// Computes output features [o0, o1) for every row of x.
using GemvRows = void (*)(const GemvArgs&, int64_t o0, int64_t o1);

namespace generic { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx512 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx512bf16 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }
namespace avx2 { void gemv_rows(const GemvArgs&, int64_t o0, int64_t o1); }

}  // namespace mha2mla::kernels
