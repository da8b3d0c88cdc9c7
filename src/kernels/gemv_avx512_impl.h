// AVX-512 y = x W^T + b for up to 8 rows of x in one pass (kGemvMaxRows): W streamed once, blocks of output
// features kept in registers. With __AVX512BF16__, bf16 weights use vdpbf16ps on pairs of inputs.
#include "kernels/gemv_args.h"
#include "kernels/scalar_convert.h"
#include "kernels/simd_avx512.h"

namespace mha2mla::kernels {
namespace {

// Rows of W are short (a few KB), so the hardware prefetcher never ramps up on them: each block asks for
// the same columns of the rows kPrefetchRows ahead while it computes, one prefetch per cache line read.
constexpr int64_t kPrefetchRows = 16;

inline void prefetch_rows(const char* w, int64_t rows, int64_t stride_bytes, int64_t byte) {
  for (int64_t r = 0; r < rows; ++r) _mm_prefetch(w + (kPrefetchRows + r) * stride_bytes + byte, _MM_HINT_T0);
}

// acc[r][j] = sum_i W[o+r][i] x[j][i], RB output features, N rows of x; f32 math.
template <int RB, int N>
inline void block_f32(const GemvArgs& a, const char* x, int64_t o, float out[RB][N]) {
  const int64_t es = elem_size(a.dtype);
  __m512 acc[RB][N];
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < N; ++j) acc[r][j] = _mm512_setzero_ps();
  const char* w = static_cast<const char*>(a.w) + o * a.w_stride * es;
  for (int64_t i = 0; i < a.in; i += 16) {
    const __mmask16 mk = tail_mask(a.in - i);
    __m512 xv[N];
    for (int j = 0; j < N; ++j) xv[j] = load16(x + (j * a.in + i) * es, a.dtype, mk);
    if ((i * es) % 64 == 0) prefetch_rows(w, RB, a.w_stride * es, i * es);
    for (int r = 0; r < RB; ++r) {
      const __m512 wv = load16(w + (r * a.w_stride + i) * es, a.dtype, mk);
      for (int j = 0; j < N; ++j) acc[r][j] = _mm512_fmadd_ps(wv, xv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < N; ++j) out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
}

#ifdef __AVX512BF16__
template <int RB, int N>
inline void block_bf16(const GemvArgs& a, const char* x, int64_t o, float out[RB][N]) {
  __m512 acc[RB][N];
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < N; ++j) acc[r][j] = _mm512_setzero_ps();
  const auto* w = static_cast<const uint16_t*>(a.w) + o * a.w_stride;
  const auto* xp = reinterpret_cast<const uint16_t*>(x);
  for (int64_t i = 0; i < a.in; i += 32) {
    const __mmask32 mk = a.in - i >= 32 ? 0xffffffffu : static_cast<__mmask32>((1ull << (a.in - i)) - 1);
    __m512i xv[N];
    for (int j = 0; j < N; ++j) xv[j] = _mm512_maskz_loadu_epi16(mk, xp + j * a.in + i);
    prefetch_rows(reinterpret_cast<const char*>(w), RB, a.w_stride * 2, i * 2);
    for (int r = 0; r < RB; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(mk, w + r * a.w_stride + i);
      for (int j = 0; j < N; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)wv, (__m512bh)xv[j]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < N; ++j) out[r][j] = _mm512_reduce_add_ps(acc[r][j]);
}
#endif

template <int RB, int N>
inline void block(const GemvArgs& a, const char* x, int64_t j0, int64_t o) {
  float out[RB][N];
#ifdef __AVX512BF16__
  if (a.dtype == DType::BF16)
    block_bf16<RB, N>(a, x, o, out);
  else
#endif
    block_f32<RB, N>(a, x, o, out);
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < N; ++j) store_output(a, j0 + j, o + r, out[r][j]);
}

// RB output features per block: RB * N accumulators, N rows of x and one row of W within the 32 vector registers.
template <int N>
inline void rows_pass(const GemvArgs& a, int64_t j0, int64_t o0, int64_t o1) {
  constexpr int RB = N == 1 ? 8 : N == 2 ? 6 : N == 3 ? 4 : N == 4 ? 3 : N == 5 ? 4 : N <= 7 ? 3 : 2;
  const char* x = static_cast<const char*>(a.x) + j0 * a.in * elem_size(a.dtype);
  int64_t o = o0;
  for (; o + RB <= o1; o += RB) block<RB, N>(a, x, j0, o);
  for (; o < o1; ++o) block<1, N>(a, x, j0, o);
}

// Every row of x in one pass, so that W is read once per call (the server's batched step: two passes of four rows
// read it twice, and the GEMV was half of an 8-sequence MLA step). Each output sums in one accumulator over the
// input in order whatever N is, so a row's result does not depend on the rows beside it.
void gemv_rows_impl(const GemvArgs& a, int64_t o0, int64_t o1) {
  for (int64_t j0 = 0; j0 < a.n; j0 += 8) {
    switch (a.n - j0 >= 8 ? 8 : a.n - j0) {
      case 1: rows_pass<1>(a, j0, o0, o1); break;
      case 2: rows_pass<2>(a, j0, o0, o1); break;
      case 3: rows_pass<3>(a, j0, o0, o1); break;
      case 4: rows_pass<4>(a, j0, o0, o1); break;
      case 5: rows_pass<5>(a, j0, o0, o1); break;
      case 6: rows_pass<6>(a, j0, o0, o1); break;
      case 7: rows_pass<7>(a, j0, o0, o1); break;
      default: rows_pass<8>(a, j0, o0, o1); break;
    }
  }
}

}  // namespace
}  // namespace mha2mla::kernels
