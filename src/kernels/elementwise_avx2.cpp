// AVX2 rows of the fused per-token ops (elementwise_args.h), for CPUs without AVX-512 as well as with it.
// Compiled with -mavx2 -mfma -mf16c; called only when cpu_has_avx2(). Same rounding points as the portable
// loops of elementwise.cpp; the tails (n % 8) run those formulas one value at a time.
#include <cmath>

#include "kernels/elementwise_args.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

// e^x for x <= 0: Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2, exact to f32 for |n| <= 127), e^r by its
// Taylor series to degree 7 (error below 6e-9), times 2^n built in the exponent field. 0 below -87.3, where
// e^x leaves the normal range (silu's product with it is then below any value a test or model can see).
inline __m256 exp_nonpos_ps(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  constexpr float c[8] = {1.f / 5040, 1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f};
  __m256 p = _mm256_set1_ps(c[0]);
  for (int i = 1; i < 8; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

}  // namespace

void silu_mul_span(DType t, const void* g, const void* u, void* y, int64_t n) {
  const int64_t es = elem_size(t);
  const char* gp = static_cast<const char*>(g);
  const char* up = static_cast<const char*>(u);
  char* yp = static_cast<char*>(y);
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = load8(gp + i * es, t);
    // e = e^-|v| <= 1, so nothing overflows: silu(v) = v / (1 + e) for v >= 0 and v e / (1 + e) below.
    const __m256 e = exp_nonpos_ps(_mm256_or_ps(v, sign));
    const __m256 num = _mm256_blendv_ps(v, _mm256_mul_ps(v, e), v);  // blendv picks by the sign bit of v
    const __m256 s = round_to(_mm256_div_ps(num, _mm256_add_ps(one, e)), t);
    store8(yp + i * es, t, _mm256_mul_ps(s, load8(up + i * es, t)));
  }
  for (; i < n; ++i) {
    const float v = load_elem(g, i, t);
    store_elem(y, i, t, round_to_storage(v / (1.f + std::exp(-v)), t) * load_elem(u, i, t));
  }
}

void rms_norm_row(DType t, const void* x, const void* w, void* y, int64_t D, float eps) {
  const int64_t es = elem_size(t);
  const char* xp = static_cast<const char*>(x);
  const char* wp = static_cast<const char*>(w);
  char* yp = static_cast<char*>(y);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= D; i += 8) {
    const __m256 v = load8(xp + i * es, t);
    const __m256 sq = _mm256_mul_ps(v, v);  // f32 squares, as the portable loop forms them
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
  double ss = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (int64_t j = i; j < D; ++j) {
    const float v = load_elem(x, j, t);
    ss += static_cast<double>(v * v);
  }
  const float var = static_cast<float>(ss / static_cast<double>(D));
  const float inv = 1.f / std::sqrt(var + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= D; i += 8)
    store8(yp + i * es, t, _mm256_mul_ps(load8(wp + i * es, t), round_to(_mm256_mul_ps(load8(xp + i * es, t), vinv), t)));
  for (; i < D; ++i) {
    store_elem(y, i, t, load_elem(w, i, t) * round_to_storage(load_elem(x, i, t) * inv, t));
  }
}

}  // namespace mha2mla::kernels::avx2
