// AVX2 y = x W^T + b (f32 arithmetic for every storage type), for CPUs without AVX-512. Compiled with
// -mavx2 -mfma -mf16c; called only when cpu_has_avx2(). W is streamed once per pass of up to 3 rows of x, one
// row of W at a time, front to back (the hardware prefetcher follows the single stream), each row of x summed
// in the same four chains whatever the pass holds.
#include <vector>

#include "kernels/gemv_args.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

// bf16 -> f32 by interleaving with zeros: 16 weights become two vectors in the order
// [0-3, 8-11] and [4-7, 12-15] (vpunpck works within 128-bit lanes), so x is stored permuted to match.
inline void permute_x16(const float* x, float* xp) {
  for (int k = 0; k < 4; ++k) xp[k] = x[k], xp[4 + k] = x[8 + k], xp[8 + k] = x[4 + k], xp[12 + k] = x[12 + k];
}

// 16 weights of storage type T at p as two f32 vectors; bf16 ones in the order of permute_x16.
template <DType T>
inline void load16_t(const char* p, __m256& w0, __m256& w1) {
  if constexpr (T == DType::BF16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    w0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), v));
    w1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), v));
  } else {
    w0 = load8(p, T), w1 = load8(p + 8 * elem_size(T), T);
  }
}

inline void load16(const char* p, DType t, __m256& w0, __m256& w1) {
  if (t == DType::BF16) load16_t<DType::BF16>(p, w0, w1);
  else if (t == DType::F16) load16_t<DType::F16>(p, w0, w1);
  else load16_t<DType::F32>(p, w0, w1);
}

// Stores y[j, o] from the sum s over the first in16 inputs of W's row w, adding the remaining ones.
inline void finish_output(const GemvArgs& a, const char* w, int64_t in16, int64_t j, int64_t o, float s) {
  const char* x = static_cast<const char*>(a.x) + j * a.in * elem_size(a.dtype);
  for (int64_t i = in16; i < a.in; ++i) s += load_elem(w, i, a.dtype) * load_elem(x, i, a.dtype);
  store_output(a, j, o, s);
}

// One row of W against one row of x, read front to back: a single sequential stream per thread, which the
// hardware prefetcher follows on its own. Four accumulator chains hide the FMA latency; the storage type is a
// template argument, so the loop holds loads and FMAs only. On a Zen 3 the software prefetch two rows ahead
// that this loop used to issue cost f32 a quarter of its streaming rate (0.71-0.93 of ggml's one-row dot
// product in bench_gemv_vs_ggml, 1 and 2 threads; 0.96-1.06 without) and did not help bf16 (0.98-1.15 with,
// 1.06-1.09 without).
template <DType T>
inline float row_dot1(const float* X, int64_t in16, const char* w) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  auto step = [&](int64_t i, int k) {
    __m256 w0, w1;
    load16_t<T>(w + i * es, w0, w1);
    acc[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(X + i), acc[k]);
    acc[k + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(X + i + 8), acc[k + 1]);
  };
  int64_t i = 0;
  for (; i + 32 <= in16; i += 32) step(i, 0), step(i + 16, 2);
  if (i < in16) step(i, 0);
  return hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

// row_dot1 for N rows of x against one row of W, read once: each row keeps row_dot1's four chains and order, so
// its sums are bit-identical to row_dot1's (a row's result never depends on how many rows share the pass: a
// server batches sequences and promises each one what it gets alone). 4N accumulators: N <= 3 fits 16 ymm.
template <DType T, int N>
inline void rows_dot(const float* X, int64_t xs, int64_t in16, const char* w, float out[N]) {
  constexpr int64_t es = T == DType::F32 ? 4 : 2;
  __m256 acc[N][4];
  for (int j = 0; j < N; ++j)
    for (int k = 0; k < 4; ++k) acc[j][k] = _mm256_setzero_ps();
  auto step = [&](int64_t i, int k) {
    __m256 w0, w1;
    load16_t<T>(w + i * es, w0, w1);
    for (int j = 0; j < N; ++j) {
      acc[j][k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(X + j * xs + i), acc[j][k]);
      acc[j][k + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(X + j * xs + i + 8), acc[j][k + 1]);
    }
  };
  int64_t i = 0;
  for (; i + 32 <= in16; i += 32) step(i, 0), step(i + 16, 2);
  if (i < in16) step(i, 0);
  for (int j = 0; j < N; ++j)
    out[j] = hsum8(_mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3])));
}

template <DType T, int N>
void rows_seqn_t(const GemvArgs& a, const float* X, int64_t xs, int64_t in16, int64_t j0, int64_t o0, int64_t o1) {
  const int64_t rs = a.w_stride * elem_size(T);
  for (int64_t o = o0; o < o1; ++o) {
    const char* w = static_cast<const char*>(a.w) + o * rs;
    float out[N];
    rows_dot<T, N>(X, xs, in16, w, out);
    for (int j = 0; j < N; ++j) finish_output(a, w, in16, j0 + j, o, out[j]);
  }
}

template <int N>
void rows_seqn(const GemvArgs& a, const float* X, int64_t xs, int64_t in16, int64_t j0, int64_t o0, int64_t o1) {
  switch (a.dtype) {
    case DType::BF16: return rows_seqn_t<DType::BF16, N>(a, X, xs, in16, j0, o0, o1);
    case DType::F16: return rows_seqn_t<DType::F16, N>(a, X, xs, in16, j0, o0, o1);
    case DType::F32: return rows_seqn_t<DType::F32, N>(a, X, xs, in16, j0, o0, o1);
  }
}

template <DType T>
void rows_seq1_t(const GemvArgs& a, const float* X, int64_t in16, int64_t j0, int64_t o0, int64_t o1) {
  const int64_t rs = a.w_stride * elem_size(T);
  for (int64_t o = o0; o < o1; ++o) {
    const char* w = static_cast<const char*>(a.w) + o * rs;
    finish_output(a, w, in16, j0, o, row_dot1<T>(X, in16, w));
  }
}

void rows_seq1(const GemvArgs& a, const float* X, int64_t in16, int64_t j0, int64_t o0, int64_t o1) {
  switch (a.dtype) {
    case DType::BF16: return rows_seq1_t<DType::BF16>(a, X, in16, j0, o0, o1);
    case DType::F16: return rows_seq1_t<DType::F16>(a, X, in16, j0, o0, o1);
    case DType::F32: return rows_seq1_t<DType::F32>(a, X, in16, j0, o0, o1);
  }
}

}  // namespace

void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) {
  const int64_t in16 = a.in / 16 * 16, es = elem_size(a.dtype);
  // x as f32 (permuted for bf16), up to 3 rows of in16 values; grown once per thread and reused.
  thread_local std::vector<float> xbuf;
  if (static_cast<int64_t>(xbuf.size()) < in16 * 3) xbuf.resize(in16 * 3);
  float* X = xbuf.data();
  for (int64_t j0 = 0; j0 < a.n; j0 += 3) {
    const int64_t nr = a.n - j0 >= 3 ? 3 : a.n - j0;
    for (int64_t j = 0; j < nr; ++j) {
      float* xr = X + j * in16;
      row_to_f32(static_cast<const char*>(a.x) + (j0 + j) * a.in * es, a.dtype, in16, xr);
      for (int64_t i = 0; a.dtype == DType::BF16 && i < in16; i += 16) {
        float t[16];
        std::memcpy(t, xr + i, sizeof t);
        permute_x16(t, xr + i);
      }
    }
    switch (nr) {
      case 1: rows_seq1(a, X, in16, j0, o0, o1); break;
      case 2: rows_seqn<2>(a, X, in16, in16, j0, o0, o1); break;
      default: rows_seqn<3>(a, X, in16, in16, j0, o0, o1); break;
    }
  }
}

}  // namespace mha2mla::kernels::avx2
