#pragma once
// AVX2 + FMA + F16C helpers for the kernel files compiled with -mavx2 -mfma -mf16c. Internal linkage only
// (see attention_args.h for why): include this from those files alone.
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "simd_avx2.h needs -mavx2 -mfma -mf16c"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/attention_args.h"
#include "kernels/scalar_convert.h"

namespace mha2mla::kernels {
namespace {

inline int64_t round_up8(int64_t x) { return (x + 7) / 8 * 8; }

// Sum of the 8 lanes.
inline float hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

inline float hmax8(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

// Lane j of the result = sum of the lanes of v[j] (a transposing reduction: 3 rounds of hadd).
inline __m256 reduce8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 2^x for x <= 0 or -inf (softmax terms: a score minus its row's running maximum): exact 0 below -126.5,
// relative error under 2.2e-7 on the rest, from a degree-5 polynomial fitted for minimax relative error on
// [-0.5, 0.5] (two fewer terms than exp2_ps of simd_avx512.h, and no upper clamp or mask: x = -127 builds a
// zero exponent field, so the product is 0).
inline __m256 exp2_nonpos_ps(__m256 x) {
  constexpr float c[6] = {1.0000001192092896f, 0.6931469440460205f, 0.24022120237350464f, 0.05550713092088699f,
                          0.009675510227680206f, 0.0013276379322633147f};
  x = _mm256_max_ps(x, _mm256_set1_ps(-127.f));  // -inf included
  const __m256 xi = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, xi);  // [-0.5, 0.5]
  __m256 p = _mm256_set1_ps(c[5]);
  for (int i = 4; i >= 0; --i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[i]));
  // 2^xi built in the exponent field: xi is in [-127, 0], and -127 gives 0.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// 8 elements of storage type t as f32 (all 8 are read).
inline __m256 load8(const void* p, DType t) {
  switch (t) {
    case DType::F32: return _mm256_loadu_ps(static_cast<const float*>(p));
    case DType::BF16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p))), 16));
    case DType::F16: return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
  return _mm256_setzero_ps();
}

// 8 f32 values rounded to storage type t and widened back (what store8 then load8 give): round to nearest
// even, a NaN kept a quiet NaN.
inline __m256 round_to(__m256 v, DType t) {
  switch (t) {
    case DType::F32: return v;
    case DType::F16: return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    case DType::BF16: {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
      r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
      const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
      return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_or_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x00400000))),
                              nan);
    }
  }
  return v;
}

// 8 f32 values stored as storage type t, rounded as round_to.
inline void store8(void* p, DType t, __m256 v) {
  switch (t) {
    case DType::F32: _mm256_storeu_ps(static_cast<float*>(p), v); return;
    case DType::F16:
      _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    case DType::BF16: {
      const __m256i r = _mm256_srli_epi32(_mm256_castps_si256(round_to(v, t)), 16);  // bf16 in the low halves
      _mm_storeu_si128(static_cast<__m128i*>(p),
                       _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
      return;
    }
  }
}

// n elements of storage type t as f32 into dst[0, n), zeros in dst[n, round_up8(n)).
inline void row_to_f32(const void* src, DType t, int64_t n, float* dst) {
  int64_t i = 0;
  const int64_t es = elem_size(t);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(static_cast<const char*>(src) + i * es, t));
  for (; i < n; ++i) dst[i] = load_elem(src, i, t);
  for (; i < round_up8(n); ++i) dst[i] = 0.f;
}

}  // namespace
}  // namespace mha2mla::kernels
