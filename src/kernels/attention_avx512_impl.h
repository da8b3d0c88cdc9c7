// AVX-512 attention kernels; included by attention_avx512.cpp (f32 math for every storage type) and
// attention_avx512bf16.cpp (adds vdpbf16ps for bf16 prefill). Everything here has internal linkage.
#include <cmath>
#include <limits>

#include "kernels/attention_args.h"
#include "kernels/scalar_convert.h"
#include "kernels/simd_avx512.h"

namespace mha2mla::kernels {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kBc = 32;       // keys per prefill tile
constexpr int32_t kNoPos = -(1 << 30);  // position of padding rows: sees nothing

// Whether every query row at slots [pmin, pmax] sees all keys [j0, j0+nb) of batch row `valid` (no mask needed).
inline bool block_fully_visible(const AttnArgs& a, const bool* valid, int64_t j0, int64_t nb, int64_t pmin,
                                int64_t pmax) {
  if (j0 + nb - 1 > pmin || (a.window > 0 && j0 <= pmax - a.window)) return false;
  if (valid)
    for (int64_t j = 0; j < nb; ++j)
      if (!valid[j0 + j]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Prefill. Rows (head-major: r = head_in_group * tq + t) are the SIMD lanes of the score tile
// St[key][row], so the softmax statistics are plain vector ops and K rows are broadcast from the
// cache without packing. Query heads of a GQA group share every K/V tile.

// St[j][rows] = sum_d Qt[d][rows] * K[j][d] for keys j0..j0+KJ, NV row vectors starting at rv0.
template <int NV, int KJ>
inline void qk_f32(const float* Qt, int64_t Rp, int64_t D, const float* const* krow, float* St, int64_t rv0, float c) {
  __m512 acc[KJ][NV];
  for (int j = 0; j < KJ; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_ps();
  const float* q = Qt + rv0 * 16;
  for (int64_t d = 0; d < D; ++d, q += Rp) {
    __m512 qv[NV];
    for (int v = 0; v < NV; ++v) qv[v] = _mm512_loadu_ps(q + 16 * v);
    for (int j = 0; j < KJ; ++j) {
      const __m512 kb = _mm512_set1_ps(krow[j][d]);
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_fmadd_ps(qv[v], kb, acc[j][v]);
    }
  }
  const __m512 cv = _mm512_set1_ps(c);
  for (int j = 0; j < KJ; ++j)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(St + j * Rp + (rv0 + v) * 16, _mm512_mul_ps(acc[j][v], cv));
}

#ifdef __AVX512BF16__
// As qk_f32 with bf16 pairs: Qp[d/2][rows] holds (q[d], q[d+1]) per row; K pairs are broadcast.
template <int NV, int KJ>
inline void qk_bf16(const uint32_t* Qp, int64_t Rp, int64_t D, const uint16_t* const* krow, float* St, int64_t rv0,
                    float c) {
  __m512 acc[KJ][NV];
  for (int j = 0; j < KJ; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_ps();
  const uint32_t* q = Qp + rv0 * 16;
  for (int64_t d = 0; d < D; d += 2, q += Rp) {
    __m512i qv[NV];
    for (int v = 0; v < NV; ++v) qv[v] = _mm512_loadu_si512(q + 16 * v);
    for (int j = 0; j < KJ; ++j) {
      uint32_t pair;
      std::memcpy(&pair, krow[j] + d, 4);
      const __m512i kb = _mm512_set1_epi32(static_cast<int32_t>(pair));
      for (int v = 0; v < NV; ++v)
        acc[j][v] = _mm512_dpbf16_ps(acc[j][v], (__m512bh)qv[v], (__m512bh)kb);
    }
  }
  const __m512 cv = _mm512_set1_ps(c);
  for (int j = 0; j < KJ; ++j)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(St + j * Rp + (rv0 + v) * 16, _mm512_mul_ps(acc[j][v], cv));
}
#endif

// acc[r][dv chunk] += sum_j P[j][r] * V[j][chunk] for RB rows and NC 16-wide chunks (last one masked).
template <int RB, int NC>
inline void pv_f32(const float* St, int64_t Rp, int64_t r0, int64_t nb, const float* const* vrow, int64_t dv0,
                   __mmask16 last, float* acc, int64_t Dvp) {
  __m512 a[RB][NC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) a[r][c] = _mm512_loadu_ps(acc + (r0 + r) * Dvp + dv0 + 16 * c);
  for (int64_t j = 0; j < nb; ++j) {
    __m512 vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_maskz_loadu_ps(c == NC - 1 ? last : 0xffff, vrow[j] + dv0 + 16 * c);
    for (int r = 0; r < RB; ++r) {
      const __m512 p = _mm512_set1_ps(St[j * Rp + r0 + r]);
      for (int c = 0; c < NC; ++c) a[r][c] = _mm512_fmadd_ps(p, vv[c], a[r][c]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + (r0 + r) * Dvp + dv0 + 16 * c, a[r][c]);
}

#ifdef __AVX512BF16__
// As pv_f32 with bf16 pairs of keys: Pp[j/2][rows] and Vp[j/2][Dvp] hold (x[j], x[j+1]).
template <int RB, int NC>
inline void pv_bf16(const uint32_t* Pp, int64_t Rp, int64_t r0, int64_t npairs, const uint32_t* Vp, int64_t Dvp,
                    int64_t dv0, float* acc) {
  __m512 a[RB][NC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) a[r][c] = _mm512_loadu_ps(acc + (r0 + r) * Dvp + dv0 + 16 * c);
  for (int64_t jp = 0; jp < npairs; ++jp) {
    __m512i vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_si512(Vp + jp * Dvp + dv0 + 16 * c);
    for (int r = 0; r < RB; ++r) {
      const __m512i p = _mm512_set1_epi32(static_cast<int32_t>(Pp[jp * Rp + r0 + r]));
      for (int c = 0; c < NC; ++c)
        a[r][c] = _mm512_dpbf16_ps(a[r][c], (__m512bh)p, (__m512bh)vv[c]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(acc + (r0 + r) * Dvp + dv0 + 16 * c, a[r][c]);
}

// 32 bf16 lanes (lo[0..15], hi[0..15]) -> pairs (lo[i], hi[i]).
inline __m512i interleave_bf16(__m512i lo_hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, lo_hi);
}
#endif

struct PVF32 {
  const float* St; int64_t Rp, r0, nb; const float* const* vrow; float* acc; int64_t Dvp;
  template <int RB, int NC>
  void operator()(int64_t dv0, __mmask16 last) const { pv_f32<RB, NC>(St, Rp, r0, nb, vrow, dv0, last, acc, Dvp); }
};

#ifdef __AVX512BF16__
struct PVBf16 {
  const uint32_t* Pp; int64_t Rp, r0, npairs; const uint32_t* Vp; int64_t Dvp; float* acc;
  template <int RB, int NC>
  void operator()(int64_t dv0, __mmask16) const { pv_bf16<RB, NC>(Pp, Rp, r0, npairs, Vp, Dvp, dv0, acc); }
};
#endif

template <class F>
inline void for_row_blocks(int64_t R, F&& f) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) f(r, 4);
  for (; r < R; ++r) f(r, 1);
}

// Value columns [d0, d1) in chunks of 4 vectors (64 values), then one chunk for the rest; the last vector may
// be partial.
template <int RB, class PV>
inline void dispatch_chunks(int64_t d0, int64_t d1, PV&& pv) {
  int64_t dv = d0;
  for (; dv + 64 <= d1; dv += 64) pv.template operator()<RB, 4>(dv, static_cast<__mmask16>(0xffff));
  const int64_t rest = d1 - dv;
  if (rest <= 0) return;
  const __mmask16 last = tail_mask(rest - (rest - 1) / 16 * 16);
  switch ((rest + 15) / 16) {
    case 1: pv.template operator()<RB, 1>(dv, last); break;
    case 2: pv.template operator()<RB, 2>(dv, last); break;
    case 3: pv.template operator()<RB, 3>(dv, last); break;
  }
}
template <int RB, class PV>
inline void dispatch_chunks(int64_t Dv, PV&& pv) { dispatch_chunks<RB>(0, Dv, pv); }

void prefill_tile(const AttnArgs& a, int64_t b, int64_t kvh, int64_t t0, int64_t tq) {
  const int64_t g = a.Hq / a.Hkv, R = g * tq, NV = (R + 15) / 16, Rp = NV * 16;
  const int64_t D = a.D1, Dv = a.Dv, Dvp = round_up(Dv, 16);
#ifdef __AVX512BF16__
  const bool pairs = a.dtype == DType::BF16;  // D even is checked by the front end
#else
  const bool pairs = false;
#endif
  const bool conv_k = !pairs && a.dtype != DType::F32, conv_v = a.dtype != DType::F32 || (Dv % 16) != 0;
  Scratch sc(Rp * D * 4 + kBc * Rp * 4 * 2 + Rp * Dvp * 4 + Rp * 4 * 4 + kBc * round_up(D, 16) * 4 +
             kBc * Dvp * 4 + 64 * 12);
  if (!sc.ok()) return;
  float* Qt = sc.take<float>(Rp * D);          // [D][Rp] f32, or [D/2][Rp] bf16 pairs
  float* St = sc.take<float>(kBc * Rp);        // [kBc][Rp] scores, then probabilities
  [[maybe_unused]] uint32_t* Pp = sc.take<uint32_t>(kBc / 2 * Rp);  // [kBc/2][Rp] bf16 probability pairs
  float* acc = sc.take<float>(Rp * Dvp);       // [Rp][Dvp]
  float* m = sc.take<float>(Rp);
  float* l = sc.take<float>(Rp);
  float* alpha = sc.take<float>(Rp);
  int32_t* pos = sc.take<int32_t>(Rp);
  float* Kf = sc.take<float>(kBc * round_up(D, 16));  // converted K rows (f32 math on 16-bit storage)
  float* Vf = sc.take<float>(kBc * Dvp);              // converted V rows, or Vp pairs [kBc/2][Dvp]
  const int64_t Dr = round_up(D, 16);

  // Pack Q: transposed (rows are lanes), padded rows are zero and see nothing.
  for (int64_t r = 0; r < Rp; ++r) {
    const bool live = r < R;
    const int64_t h = kvh * g + (live ? r / tq : 0), t = t0 + (live ? r % tq : 0);
    pos[r] = live ? static_cast<int32_t>(a.start + t) : kNoPos;
    m[r] = kNegInf;
    l[r] = 0.f;
    const char* qrow = row_ptr(a.q1, a.dtype, b, h, t);
    if (pairs) {
      auto* Qp = reinterpret_cast<uint32_t*>(Qt);
      for (int64_t d = 0; d < D; d += 2) {
        uint32_t pr = 0;
        if (live) std::memcpy(&pr, qrow + d * 2, 4);
        Qp[(d / 2) * Rp + r] = pr;
      }
    } else {
      for (int64_t d = 0; d < D; ++d) Qt[d * Rp + r] = live ? load_elem(qrow, d, a.dtype) : 0.f;
    }
  }
  for (int64_t i = 0; i < Rp * Dvp; ++i) acc[i] = 0.f;

  const int64_t pmin = a.start + t0, pmax = a.start + t0 + tq - 1;
  const int64_t lo = a.window > 0 ? imax(0, pmin - a.window + 1) : 0, hi = imin(a.S, pmax + 1);
  const float c = a.scale * kLog2e;
  const bool* valid = a.valid ? a.valid + b * a.S : nullptr;
  const float* krow[kBc];
  const float* vrow[kBc];
  [[maybe_unused]] const uint16_t* krow16[kBc];

  for (int64_t j0 = lo; j0 < hi; j0 += kBc) {
    const int64_t nb = imin(kBc, hi - j0);
    // K rows: straight from the cache, or converted to f32.
    for (int64_t j = 0; j < nb; ++j) {
      const char* kr = row_ptr(a.k1, a.dtype, b, kvh, j0 + j);
      krow16[j] = reinterpret_cast<const uint16_t*>(kr);
      if (conv_k) {
        row_to_f32(Kf + j * Dr, kr, a.dtype, D);
        krow[j] = Kf + j * Dr;
      } else {
        krow[j] = reinterpret_cast<const float*>(kr);
      }
    }
    // Scores St[j][rows] (log2 domain).
    for (int64_t rv0 = 0; rv0 < NV; rv0 += 6) {
      const int64_t nv = imin(6, NV - rv0);
      int64_t j = 0;
#define MHA2MLA_QK(NVV, KJ)                                                                                   \
  do {                                                                                                       \
    if (pairs) {                                                                                             \
      MHA2MLA_QK_BF16(NVV, KJ);                                                                              \
    } else {                                                                                                 \
      qk_f32<NVV, KJ>(Qt, Rp, D, krow + j, St + j * Rp, rv0, c);                                             \
    }                                                                                                        \
  } while (0)
#ifdef __AVX512BF16__
#define MHA2MLA_QK_BF16(NVV, KJ) \
  qk_bf16<NVV, KJ>(reinterpret_cast<const uint32_t*>(Qt), Rp, D, krow16 + j, St + j * Rp, rv0, c)
#else
#define MHA2MLA_QK_BF16(NVV, KJ) (void)0
#endif
#define MHA2MLA_QK_NV(KJ)                  \
  switch (nv) {                            \
    case 1: MHA2MLA_QK(1, KJ); break;      \
    case 2: MHA2MLA_QK(2, KJ); break;      \
    case 3: MHA2MLA_QK(3, KJ); break;      \
    case 4: MHA2MLA_QK(4, KJ); break;      \
    case 5: MHA2MLA_QK(5, KJ); break;      \
    default: MHA2MLA_QK(6, KJ); break;     \
  }
      for (; j + 2 <= nb; j += 2) { MHA2MLA_QK_NV(2) }
      for (; j < nb; ++j) { MHA2MLA_QK_NV(1) }
#undef MHA2MLA_QK_NV
#undef MHA2MLA_QK_BF16
#undef MHA2MLA_QK
    }
    // Masks: skipped for tiles every row sees whole.
    if (!block_fully_visible(a, valid, j0, nb, pmin, pmax)) {
      for (int64_t j = 0; j < nb; ++j) {
        const bool kv_ok = !valid || valid[j0 + j];
        const __m512i s = _mm512_set1_epi32(static_cast<int32_t>(j0 + j));
        for (int64_t rv = 0; rv < NV; ++rv) {
          const __m512i p = _mm512_loadu_si512(pos + rv * 16);
          __mmask16 vis = kv_ok ? _mm512_cmple_epi32_mask(s, p) : 0;
          if (a.window > 0)
            vis &= _mm512_cmpgt_epi32_mask(s, _mm512_sub_epi32(p, _mm512_set1_epi32(static_cast<int32_t>(a.window))));
          float* st = St + j * Rp + rv * 16;
          _mm512_storeu_ps(st, _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), vis, _mm512_loadu_ps(st)));
        }
      }
    }
    // Online softmax per row.
    for (int64_t rv = 0; rv < NV; ++rv) {
      __m512 mx = _mm512_set1_ps(kNegInf);
      for (int64_t j = 0; j < nb; ++j) mx = _mm512_max_ps(mx, _mm512_loadu_ps(St + j * Rp + rv * 16));
      const __m512 mo = _mm512_loadu_ps(m + rv * 16), mn = _mm512_max_ps(mo, mx);
      const __m512 mu = _mm512_mask_mov_ps(mn, _mm512_cmp_ps_mask(mn, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ),
                                           _mm512_setzero_ps());
      const __m512 al = exp2_ps(_mm512_sub_ps(mo, mu));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; ++j) {
        float* st = St + j * Rp + rv * 16;
        const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(st), mu));
        sum = _mm512_add_ps(sum, p);
        _mm512_storeu_ps(st, p);
      }
      _mm512_storeu_ps(l + rv * 16, _mm512_fmadd_ps(_mm512_loadu_ps(l + rv * 16), al, sum));
      _mm512_storeu_ps(m + rv * 16, mn);
      _mm512_storeu_ps(alpha + rv * 16, al);
    }
    for (int64_t r = 0; r < R; ++r) {
      if (alpha[r] == 1.f) continue;
      const __m512 al = _mm512_set1_ps(alpha[r]);
      for (int64_t d = 0; d < Dvp; d += 16)
        _mm512_storeu_ps(acc + r * Dvp + d, _mm512_mul_ps(al, _mm512_loadu_ps(acc + r * Dvp + d)));
    }
    // acc += P V.
    if (pairs) {
#ifdef __AVX512BF16__
      const int64_t npairs = (nb + 1) / 2;
      auto* Vp = reinterpret_cast<uint32_t*>(Vf);
      for (int64_t jp = 0; jp < npairs; ++jp) {
        const int64_t j = 2 * jp;
        const bool two = j + 1 < nb;
        const auto* v0 = reinterpret_cast<const uint16_t*>(row_ptr(a.v, a.dtype, b, kvh, j0 + j));
        const auto* v1 = two ? reinterpret_cast<const uint16_t*>(row_ptr(a.v, a.dtype, b, kvh, j0 + j + 1)) : v0;
        for (int64_t d = 0; d < Dvp; d += 16) {
          const __mmask16 mk = tail_mask(Dv - d);
          const __m256i x0 = _mm256_maskz_loadu_epi16(mk, v0 + d);
          const __m256i x1 = two ? _mm256_maskz_loadu_epi16(mk, v1 + d) : _mm256_setzero_si256();
          _mm512_storeu_si512(Vp + jp * Dvp + d,
                              interleave_bf16(_mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1)));
        }
        for (int64_t rv = 0; rv < NV; ++rv) {
          const __m512 p0 = _mm512_loadu_ps(St + j * Rp + rv * 16);
          const __m512 p1 = two ? _mm512_loadu_ps(St + (j + 1) * Rp + rv * 16) : _mm512_setzero_ps();
          const __m512i pb = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);
          _mm512_storeu_si512(Pp + jp * Rp + rv * 16, interleave_bf16(pb));
        }
      }
      for_row_blocks(R, [&](int64_t r0, int64_t rb) {
        PVBf16 pv{Pp, Rp, r0, npairs, Vp, Dvp, acc};
        if (rb == 4) dispatch_chunks<4>(Dvp, pv); else dispatch_chunks<1>(Dvp, pv);
      });
#endif
    } else {
      for (int64_t j = 0; j < nb; ++j) {
        const char* vr = row_ptr(a.v, a.dtype, b, kvh, j0 + j);
        if (conv_v) {
          row_to_f32(Vf + j * Dvp, vr, a.dtype, Dv);
          vrow[j] = Vf + j * Dvp;
        } else {
          vrow[j] = reinterpret_cast<const float*>(vr);
        }
      }
      for_row_blocks(R, [&](int64_t r0, int64_t rb) {
        PVF32 pv{St, Rp, r0, nb, vrow, acc, Dvp};
        if (rb == 4) dispatch_chunks<4>(Dv, pv); else dispatch_chunks<1>(Dv, pv);
      });
    }
  }
  // Normalise; a row that saw no key gets zeros.
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = kvh * g + r / tq, t = t0 + r % tq;
    const __m512 inv = _mm512_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
    char* o = static_cast<char*>(a.out) + ((b * a.Hq + h) * a.T + t) * Dv * elem_size(a.dtype);
    for (int64_t d = 0; d < Dv; d += 16)
      store16(o + d * elem_size(a.dtype), a.dtype, _mm512_mul_ps(inv, _mm512_loadu_ps(acc + r * Dvp + d)),
              tail_mask(Dv - d));
  }
}

// ---------------------------------------------------------------------------------------------
// Decode over a split [s0, s1) of the keys. Few query rows: dot products run along D and are
// reduced per key; K/V rows shared by every row of the work item are converted once per block.
constexpr int64_t kDecBlock = 16;

// Lane j of the result = sum of the lanes of v[j] (a transposing reduction tree: ~3 ops per sum).
inline __m512 reduce16(const __m512* v) {
  __m512 s[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)  // 128-bit groups: [a0+a2, b0+b2, a1+a3, b1+b3]
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // groups: partial sums of keys 4i..4i+3
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 2; ++i)  // sum groups 0+2 and 1+3 of two vectors
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// acc[j] += q . k[j] over Dr (a multiple of 16) for the 16 keys of a block.
inline void dot16(const float* q, const float* const* k, int64_t Dr, __m512* acc) {
  for (int64_t d = 0; d < Dr; d += 16) {
    const __m512 qv = _mm512_loadu_ps(q + d);
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k[j] + d), acc[j]);
  }
}

#ifdef __AVX512BF16__
// dot16 on bf16 rows as stored: pairs multiply exactly and accumulate in f32 (vdpbf16ps), with no conversion.
inline void dot16_bf16(const uint16_t* q, const uint16_t* const* k, int64_t D, __m512* acc) {
  for (int64_t d = 0; d < D; d += 32) {
    const __m512i qv = _mm512_loadu_si512(q + d);
    for (int j = 0; j < 16; ++j)
      acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(k[j] + d), (__m512bh)qv);
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Absorbed MLA decode with a small latent (the SmolLM ladder: L = 24, r = 8 per RoPE head): query rows
// are the SIMD lanes, as in prefill. Every row shares the latent c, so each key is read once as a
// concatenated row [c | k_r of every RoPE head] and its elements are broadcast against Q'[d][lanes], in
// which row r is zero outside its own RoPE head's block. Nothing is reduced across lanes, and the
// softmax of a block is plain vector work, so the per-(key, row) overhead of decode_split is gone.
constexpr int64_t kLaneBlock = 64;  // keys per block: scores [64][16] and key rows stay in L1

// Whether decode_lanes handles this call: MLA (one group, value = latent), at most 16 query rows.
inline bool lanes_apply(const AttnArgs& a) {
  const int64_t R = a.Hq * a.T;
  const bool v_is_latent = a.kq ? a.vq == a.kq
                                : !a.vq && a.v.p == a.k1.p && a.v.sb == a.k1.sb && a.v.sr == a.k1.sr;
  return a.groups == 1 && R <= 16 && a.Dv == a.D1 && v_is_latent && a.k1.sh == 0;
}

// s[j] = sum_d Qt[d] * K[j][d] for KJ keys (K rows of stride ks, f32).
template <int KJ>
inline void lane_scores(const float* Qt, int64_t Dt, const float* K, int64_t ks, float* St) {
  __m512 s[KJ];
  for (int j = 0; j < KJ; ++j) s[j] = _mm512_setzero_ps();
  for (int64_t d = 0; d < Dt; ++d) {
    const __m512 q = _mm512_load_ps(Qt + d * 16);
    for (int j = 0; j < KJ; ++j) s[j] = _mm512_fmadd_ps(q, _mm512_set1_ps(K[j * ks + d]), s[j]);
  }
  for (int j = 0; j < KJ; ++j) _mm512_store_ps(St + j * 16, s[j]);
}

// acc[d] += sum_j P[j] * K[j][d] for NC values of d from d0 (acc is [Dv][16 lanes]).
template <int NC>
inline void lane_pv(const float* P, int64_t nb, const float* K, int64_t ks, int64_t d0, float* acc) {
  __m512 o[NC];
  for (int c = 0; c < NC; ++c) o[c] = _mm512_load_ps(acc + (d0 + c) * 16);
  for (int64_t j = 0; j < nb; ++j) {
    const __m512 p = _mm512_load_ps(P + j * 16);
    const float* k = K + j * ks + d0;
    for (int c = 0; c < NC; ++c) o[c] = _mm512_fmadd_ps(p, _mm512_set1_ps(k[c]), o[c]);
  }
  for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + (d0 + c) * 16, o[c]);
}

#ifdef __AVX512BF16__
// Scores on bf16 keys as stored, read in place: Qp[dp][lanes] holds the pair (q[2dp], q[2dp+1]) of each
// row, each vdpbf16ps does two multiply-adds, and the log2-domain scale c is applied to the sums. Segment i
// holds pairs qoff[i]/2.. of the concatenated key, at row p[i] + s * stride[i] of its cache buffer (no gather:
// each key costs only its multiply-adds).
struct KeySegs {
  const uint16_t* p[17];
  int64_t stride[17], n[17], qoff[17];
  int count = 0;
};
template <int KJ>
inline void lane_scores_bf16_rows(const uint32_t* Qp, const KeySegs& ks, int64_t s0, float* St, __m512 c) {
  __m512 s[KJ];
  for (int j = 0; j < KJ; ++j) s[j] = _mm512_setzero_ps();
  for (int i = 0; i < ks.count; ++i) {
    const uint16_t* base = ks.p[i] + s0 * ks.stride[i];
    const uint32_t* q = Qp + ks.qoff[i] / 2 * 16;
    for (int64_t dp = 0; dp < ks.n[i] / 2; ++dp) {
      const __m512bh qv = (__m512bh)_mm512_load_si512(q + dp * 16);
      for (int j = 0; j < KJ; ++j) {
        uint32_t pair;
        std::memcpy(&pair, base + j * ks.stride[i] + 2 * dp, 4);
        s[j] = _mm512_dpbf16_ps(s[j], qv, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(pair)));
      }
    }
  }
  for (int j = 0; j < KJ; ++j) _mm512_store_ps(St + j * 16, _mm512_mul_ps(s[j], c));
}

// lane_pv on pairs of keys: P2[jp][lanes] = (p[2jp], p[2jp+1]) and V2[jp][d] = (v[2jp][d], v[2jp+1][d]).
template <int NC>
inline void lane_pv_bf16(const uint32_t* P2, int64_t npairs, const uint32_t* V2, int64_t vs, int64_t d0, float* acc) {
  __m512 o[NC];
  for (int c = 0; c < NC; ++c) o[c] = _mm512_load_ps(acc + (d0 + c) * 16);
  for (int64_t jp = 0; jp < npairs; ++jp) {
    const __m512bh p = (__m512bh)_mm512_load_si512(P2 + jp * 16);
    const uint32_t* v = V2 + jp * vs + d0;
    for (int c = 0; c < NC; ++c)
      o[c] = _mm512_dpbf16_ps(o[c], p, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(v[c])));
  }
  for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + (d0 + c) * 16, o[c]);
}

#endif

// The lanes' running max, sum and accumulator acc[Dv][16] as the Partial of rows 0..R-1.
inline void store_lane_partial(__m512 m, __m512 l, const float* acc, int64_t R, int64_t Dv, const Partial& out) {
  alignas(64) float mv[16], lv[16];
  _mm512_store_ps(mv, m);
  _mm512_store_ps(lv, l);
  for (int64_t r = 0; r < R; ++r) {
    out.m[r] = mv[r];
    out.l[r] = lv[r];
    for (int64_t d = 0; d < Dv; ++d) out.acc[r * Dv + d] = acc[d * 16 + r];
  }
}

// One block of lane scores St[nb8][16] (log2 domain): masks the keys a row does not see (skipped for blocks
// every row sees whole), pads rows nb..nb8 with -inf, and turns the scores into probabilities against the
// updated running max m. Updates m and l; returns the factor that rescales what was summed before the block.
inline __m512 lanes_block_softmax(const AttnArgs& a, const bool* valid, int64_t j0, int64_t nb, int64_t nb8,
                                  int64_t pmin, int64_t pmax, __m512i posv, float* St, __m512& m, __m512& l) {
  if (!block_fully_visible(a, valid, j0, nb, pmin, pmax)) {
    for (int64_t j = 0; j < nb; ++j) {
      const __m512i sv = _mm512_set1_epi32(static_cast<int32_t>(j0 + j));
      __mmask16 vis = !valid || valid[j0 + j] ? _mm512_cmple_epi32_mask(sv, posv) : 0;
      if (a.window > 0)
        vis &= _mm512_cmpgt_epi32_mask(sv, _mm512_sub_epi32(posv, _mm512_set1_epi32(static_cast<int32_t>(a.window))));
      _mm512_store_ps(St + j * 16, _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), vis, _mm512_load_ps(St + j * 16)));
    }
  }
  for (int64_t j = nb; j < nb8; ++j) _mm512_store_ps(St + j * 16, _mm512_set1_ps(kNegInf));
  __m512 mx = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < nb8; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(St + j * 16));
  const __m512 mn = _mm512_max_ps(m, mx);
  const __m512 mu = _mm512_mask_mov_ps(mn, _mm512_cmp_ps_mask(mn, _mm512_set1_ps(kNegInf), _CMP_EQ_OQ),
                                       _mm512_setzero_ps());
  const __m512 al = exp2_ps(_mm512_sub_ps(m, mu));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < nb8; ++j) {
    const __m512 p = exp2_ps(_mm512_sub_ps(_mm512_load_ps(St + j * 16), mu));
    sum = _mm512_add_ps(sum, p);
    _mm512_store_ps(St + j * 16, p);
  }
  l = _mm512_fmadd_ps(l, al, sum);
  m = mn;
  return al;
}

#ifdef __AVX512BF16__
// ---------------------------------------------------------------------------------------------
// decode_lanes over a 4-bit latent (per-token groups) and 4-bit rotary keys (per channel, KIVI), read in
// place. Codes 0..15 are exact in bf16, so every byte becomes the bf16 pair of its two codes (a 256-entry
// table) and scores run on vdpbf16ps as they do on bf16 storage; scales and zero points act on the sums:
//   latent group g of key j:   q·x = scale_gj (q·code) + zero_gj Σq
//   rotary keys (per channel): q·x = (q∘scale)·code + q·zero, q∘scale rounded to bf16 once per token group
//   values, per latent group:  Σ_j p_j x_jd = Σ_j (p_j scale_gj) code_jd + Σ_j p_j zero_gj
// so a key costs a bf16 key's multiply-adds plus the table lookups and scale terms, from a quarter of the bytes
// (about 1.5x the bf16 kernel's time where both are compute-bound, docs/performance.md). Slots past a buffer's n_quant are
// read from its bf16 residual.
struct Q4Tables {
  uint32_t pair[256];           // byte -> bf16(low code) | bf16(high code) << 16
  alignas(32) uint16_t bf[16];  // code -> bf16
  Q4Tables() {
    for (int n = 0; n < 16; ++n) bf[n] = f32_to_bf16(static_cast<float>(n));
    for (int x = 0; x < 256; ++x) pair[x] = bf[x & 15] | static_cast<uint32_t>(bf[x >> 4]) << 16;
  }
};
inline const Q4Tables& q4_tables() {
  static const Q4Tables t;
  return t;
}

// One f16 scale or zero point: vcvtph2ps (F16C), not the portable bit-twiddling of scalar_convert.h.
inline float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }

// Whether decode_lanes_q4 handles this decode_lanes call.
inline bool lanes_q4_apply(const AttnArgs& a) {
  const QuantDesc* c = a.kq;
  const QuantDesc* r = a.k2q;
  return a.dtype == DType::BF16 && c && c->bits == 4 && !c->per_channel && c->group % 2 == 0 && a.D1 % 2 == 0 &&
         a.D2 % 2 == 0 && a.Hkv <= 16 && (a.D2 == 0 || (r && r->bits == 4 && r->per_channel && r->group > 0));
}

// Everything a block's score and value loops read, fixed per call.
struct Q4Call {
  const uint8_t* c_codes;   // latent codes of slot 0, row stride c_sr bytes
  int64_t c_sr;
  const uint16_t* c_res;    // latent residual row 0 (slot n_quant), stride c_rsr
  int64_t c_rsr;
  const uint8_t* r_codes[16];   // rotary codes of slot 0 per head
  int64_t r_sr;
  const uint16_t* r_res[16];    // rotary residual row 0 per head
  int64_t r_rsr;
  int64_t Lp, G2, ng, nh2, Rp2;  // latent pairs, pairs per latent group, groups, rotary heads, pairs per head
};

// acc[j] += Σ_i Q[i]·pair i of key j, for n pairs of KJ keys: bf16 rows as stored (stride rs elements) or 4-bit
// code rows (stride rs bytes), a byte's two codes becoming one bf16 pair through the table.
template <int KJ>
inline void dp_bf16_rows(const uint32_t* Q, const uint16_t* base, int64_t rs, int64_t n, __m512* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const __m512bh qv = (__m512bh)_mm512_load_si512(Q + i * 16);
    for (int j = 0; j < KJ; ++j) {
      uint32_t pair;
      std::memcpy(&pair, base + j * rs + 2 * i, 4);
      acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(pair)));
    }
  }
}
template <int KJ>
inline void dp_code_rows(const uint32_t* Q, const uint8_t* base, int64_t rs, int64_t n, __m512* acc) {
  const uint32_t* tab = q4_tables().pair;
  for (int64_t i = 0; i < n; ++i) {
    const __m512bh qv = (__m512bh)_mm512_load_si512(Q + i * 16);
    for (int j = 0; j < KJ; ++j)
      acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(tab[base[j * rs + i]])));
  }
}

// St[j][lanes] for KJ keys from slot s: latent then rotary heads, in the log2 domain (c).
template <int KJ>
inline void lane_scores_q4(const Q4Call& k, bool cq, bool rq, int64_t s, int64_t n_c, int64_t n_r,
                           const uint32_t* Qp, const uint32_t* Qr, const float* sumq, const float* ksc,
                           const float* kzr, const float* bias, float* St, __m512 c) {
  __m512 tot[KJ];
  for (int j = 0; j < KJ; ++j) tot[j] = _mm512_setzero_ps();
  if (cq) {
    for (int64_t g = 0; g < k.ng; ++g) {
      const int64_t p0 = g * k.G2, p1 = imin(k.Lp, p0 + k.G2);
      __m512 acc[KJ];
      for (int j = 0; j < KJ; ++j) acc[j] = _mm512_setzero_ps();
      dp_code_rows<KJ>(Qp + p0 * 16, k.c_codes + s * k.c_sr + p0, k.c_sr, p1 - p0, acc);
      const __m512 sq = _mm512_load_ps(sumq + g * 16);
      for (int j = 0; j < KJ; ++j)
        tot[j] = _mm512_fmadd_ps(acc[j], _mm512_set1_ps(ksc[j * k.ng + g]),
                                 _mm512_fmadd_ps(sq, _mm512_set1_ps(kzr[j * k.ng + g]), tot[j]));
    }
  } else {
    dp_bf16_rows<KJ>(Qp, k.c_res + (s - n_c) * k.c_rsr, k.c_rsr, k.Lp, tot);
  }
  for (int64_t h = 0; h < k.nh2; ++h) {
    const uint32_t* q = Qr + h * k.Rp2 * 16;
    if (rq) dp_code_rows<KJ>(q, k.r_codes[h] + s * k.r_sr, k.r_sr, k.Rp2, tot);
    else dp_bf16_rows<KJ>(q, k.r_res[h] + (s - n_r) * k.r_rsr, k.r_rsr, k.Rp2, tot);
  }
  const __m512 bv = rq ? _mm512_load_ps(bias) : _mm512_setzero_ps();
  for (int j = 0; j < KJ; ++j) _mm512_store_ps(St + j * 16, _mm512_mul_ps(_mm512_add_ps(tot[j], bv), c));
}

// V2[jp][d] = bf16 pair (code[2jp][d], code[2jp+1][d]) of a block's latent codes (a missing second key: 0).
inline void codes_to_pairs(const uint8_t* rowa, const uint8_t* rowb, int64_t L, uint32_t* v2) {
  const __m512i tbl = _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(q4_tables().bf)));
  // Output lane t (16 per vector) takes byte t/2 of each row (bytes 0..7: row a, 8..15: row b) into its low
  // and high half, then the low nibble (even t) or the high one (odd t) indexes the table.
  const __m512i idx = _mm512_setr_epi32(0x80088000, 0x80088000, 0x80098001, 0x80098001, 0x800A8002, 0x800A8002,
                                        0x800B8003, 0x800B8003, 0x800C8004, 0x800C8004, 0x800D8005, 0x800D8005,
                                        0x800E8006, 0x800E8006, 0x800F8007, 0x800F8007);
  const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  const __m512i nib = _mm512_set1_epi32(0x000F000F);
  for (int64_t d = 0; d < L; d += 16) {
    const __mmask16 bm = tail_mask((imin(16, L - d) + 1) / 2);
    const __m128i xa = _mm_maskz_loadu_epi8(bm, rowa + d / 2);
    const __m128i xb = rowb ? _mm_maskz_loadu_epi8(bm, rowb + d / 2) : _mm_setzero_si128();
    const __m512i x = _mm512_broadcast_i32x4(_mm_unpacklo_epi64(xa, xb));
    const __m512i w = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(x, idx), shift), nib);
    _mm512_mask_storeu_epi32(v2 + d, tail_mask(L - d), _mm512_permutexvar_epi16(w, tbl));
  }
}

// V2[d] = bf16 pair (rowa[d], rowb[d]) of two stored bf16 rows (a missing second row: 0).
inline void bf16_rows_to_pairs(const uint16_t* rowa, const uint16_t* rowb, int64_t L, uint32_t* v2) {
  for (int64_t d = 0; d < L; d += 16) {
    const __mmask16 mk = tail_mask(L - d);
    const __m256i x0 = _mm256_maskz_loadu_epi16(mk, rowa + d);
    const __m256i x1 = rowb ? _mm256_maskz_loadu_epi16(mk, rowb + d) : _mm256_setzero_si256();
    _mm512_storeu_si512(v2 + d, interleave_bf16(_mm512_inserti64x4(_mm512_castsi256_si512(x0), x1, 1)));
  }
}

void decode_lanes_q4(const AttnArgs& a, int64_t b, int64_t s0, int64_t s1, const Partial& out) {
  const QuantDesc& cq = *a.kq;
  const QuantDesc* rq = a.k2q;
  const int64_t R = a.Hq * a.T, hdiv = a.Hq / a.Hkv, L = a.D1, r2 = a.D2;
  Q4Call k;
  k.nh2 = r2 ? a.Hkv : 0;
  k.Lp = L / 2, k.Rp2 = r2 / 2;
  const int64_t G = imin(cq.group, L);
  k.G2 = G / 2, k.ng = (L + G - 1) / G;
  const int64_t ng = k.ng, vs = round_up(L, 16), nr = k.nh2 * k.Rp2;
  k.c_codes = cq.data + b * cq.d_sb, k.c_sr = cq.d_sr;
  k.c_res = reinterpret_cast<const uint16_t*>(row_ptr(cq.residual, DType::BF16, b, 0, 0)), k.c_rsr = cq.residual.sr;
  k.r_sr = rq ? rq->d_sr : 0, k.r_rsr = rq ? rq->residual.sr : 0;
  for (int64_t h = 0; h < k.nh2; ++h) {
    k.r_codes[h] = rq->data + b * rq->d_sb + h * rq->d_sh;
    k.r_res[h] = reinterpret_cast<const uint16_t*>(row_ptr(rq->residual, DType::BF16, b, h, 0));
  }
  Scratch sc((k.Lp + 2 * nr + r2 * k.nh2 + ng + 1) * 64 + kLaneBlock * 64 + ng * (kLaneBlock / 2) * 64 + L * 64 +
             ng * 64 + kLaneBlock / 2 * vs * 4 + 2 * kLaneBlock * ng * 4 + 64 * 16);
  if (!sc.ok()) return;
  auto* Qp = sc.take<uint32_t>(k.Lp * 16);          // [Lp][lanes] latent query pairs
  auto* Qr = sc.take<uint32_t>(nr * 16);            // [nh2 * Rp2][lanes] rotary query pairs (residual keys)
  auto* Qrs = sc.take<uint32_t>(nr * 16);           // the same times the current token group's scales
  float* qrf = sc.take<float>(k.nh2 * r2 * 16);     // [nh2 * r2][lanes] rotary query, f32
  float* sumq = sc.take<float>(ng * 16);            // [ng][lanes] Σ q over each latent group
  float* bias = sc.take<float>(16);                 // Σ q·zero of the current token group
  float* St = sc.take<float>(kLaneBlock * 16);      // [block][lanes] scores, then probabilities
  auto* P2 = sc.take<uint32_t>(ng * kLaneBlock / 2 * 16);  // [ng][block/2][lanes] (p·scale) pairs
  float* acc = sc.take<float>(L * 16);              // [L][lanes] Σ p·scale·code (or Σ p·x on residual keys)
  float* pz = sc.take<float>(ng * 16);              // [ng][lanes] Σ p·zero
  auto* V2 = sc.take<uint32_t>(kLaneBlock / 2 * vs);  // [block/2][vs] value pairs
  float* ksc = sc.take<float>(kLaneBlock * ng);     // [block][ng] latent scales and zeros of the block's keys
  float* kzr = sc.take<float>(kLaneBlock * ng);
  std::memset(Qp, 0, k.Lp * 64);
  std::memset(Qr, 0, nr * 64);
  std::memset(qrf, 0, k.nh2 * r2 * 64);
  std::memset(sumq, 0, ng * 64);
  std::memset(bias, 0, 64);
  std::memset(acc, 0, L * 64);
  std::memset(pz, 0, ng * 64);
  std::memset(ksc, 0, kLaneBlock * ng * 4);
  std::memset(kzr, 0, kLaneBlock * ng * 4);
  alignas(64) int32_t pos[16];
  for (int64_t r = 0; r < 16; ++r) pos[r] = kNoPos;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = r / a.T, t = r % a.T, h2 = h / hdiv;
    pos[r] = static_cast<int32_t>(a.start + t);
    const auto* ql = reinterpret_cast<const uint16_t*>(row_ptr(a.q1, DType::BF16, b, h, t));
    for (int64_t i = 0; i < k.Lp; ++i) Qp[i * 16 + r] = ql[2 * i] | static_cast<uint32_t>(ql[2 * i + 1]) << 16;
    for (int64_t d = 0; d < L; ++d) sumq[(d / G) * 16 + r] += bf16_to_f32(ql[d]);
    if (!r2) continue;
    const auto* qr = reinterpret_cast<const uint16_t*>(row_ptr(a.q2, DType::BF16, b, h, t));
    for (int64_t i = 0; i < k.Rp2; ++i)
      Qr[(h2 * k.Rp2 + i) * 16 + r] = qr[2 * i] | static_cast<uint32_t>(qr[2 * i + 1]) << 16;
    for (int64_t d = 0; d < r2; ++d) qrf[(h2 * r2 + d) * 16 + r] = bf16_to_f32(qr[d]);
  }
  const float cl = a.scale * kLog2e;
  const __m512 cv = _mm512_set1_ps(cl);
  const int64_t pmin = a.start, pmax = a.start + a.T - 1;
  const int64_t lo = imax(s0, a.window > 0 ? pmin - a.window + 1 : 0), hi = imin(s1, imin(a.S, pmax + 1));
  const bool* valid = a.valid ? a.valid + b * a.S : nullptr;
  const __m512i posv = _mm512_load_si512(pos);
  __m512 m = _mm512_set1_ps(kNegInf), l = _mm512_setzero_ps();
  int64_t token_group = -1;  // rotary token group whose scales Qrs and bias hold
  for (int64_t j0 = lo; j0 < hi;) {
    // A block never straddles a buffer's n_quant or a rotary token group: its keys share one reading.
    int64_t j1 = imin(hi, j0 + kLaneBlock);
    const bool cqb = j0 < cq.n_quant;
    if (cqb) j1 = imin(j1, cq.n_quant);
    const bool rqb = k.nh2 > 0 && j0 < rq->n_quant;
    if (rqb) j1 = imin(j1, imin(rq->n_quant, (j0 / rq->group + 1) * rq->group));
    const int64_t nb = j1 - j0, nb8 = round_up(nb, 8);
    if (rqb && j0 / rq->group != token_group) {
      token_group = j0 / rq->group;
      __m512 bz = _mm512_setzero_ps();
      for (int64_t h = 0; h < k.nh2; ++h) {
        const int64_t so = b * rq->s_sb + h * rq->s_sh + token_group * rq->s_sr;
        for (int64_t i = 0; i < k.Rp2; ++i) {
          const float* q0 = qrf + (h * r2 + 2 * i) * 16;
          const __m512 x0 = _mm512_load_ps(q0), x1 = _mm512_load_ps(q0 + 16);
          const __m512 v0 = _mm512_mul_ps(x0, _mm512_set1_ps(half_to_f32(rq->scale[so + 2 * i])));
          const __m512 v1 = _mm512_mul_ps(x1, _mm512_set1_ps(half_to_f32(rq->scale[so + 2 * i + 1])));
          _mm512_store_si512(Qrs + (h * k.Rp2 + i) * 16, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(v1, v0)));
          bz = _mm512_fmadd_ps(x0, _mm512_set1_ps(half_to_f32(rq->zero[so + 2 * i])), bz);
          bz = _mm512_fmadd_ps(x1, _mm512_set1_ps(half_to_f32(rq->zero[so + 2 * i + 1])), bz);
        }
      }
      _mm512_store_ps(bias, bz);
    }
    if (cqb) {
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t so = b * cq.s_sb + (j0 + j) * cq.s_sr;
        for (int64_t g = 0; g < ng; ++g) {
          ksc[j * ng + g] = half_to_f32(cq.scale[so + g]);
          kzr[j * ng + g] = half_to_f32(cq.zero[so + g]);
        }
      }
    }
    const uint32_t* Qrot = rqb ? Qrs : Qr;
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8)
      lane_scores_q4<8>(k, cqb, rqb, j0 + j, cq.n_quant, rq ? rq->n_quant : 0, Qp, Qrot, sumq, ksc + j * ng,
                        kzr + j * ng, bias, St + j * 16, cv);
    for (; j < nb; ++j)
      lane_scores_q4<1>(k, cqb, rqb, j0 + j, cq.n_quant, rq ? rq->n_quant : 0, Qp, Qrot, sumq, ksc + j * ng,
                        kzr + j * ng, bias, St + j * 16, cv);
    const __m512 al = lanes_block_softmax(a, valid, j0, nb, nb8, pmin, pmax, posv, St, m, l);
    for (int64_t d = 0; d < L; ++d) _mm512_store_ps(acc + d * 16, _mm512_mul_ps(al, _mm512_load_ps(acc + d * 16)));
    for (int64_t g = 0; g < ng; ++g) _mm512_store_ps(pz + g * 16, _mm512_mul_ps(al, _mm512_load_ps(pz + g * 16)));
    const int64_t npairs = (nb + 1) / 2;  // probabilities past nb are 0
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t jp = 0; jp < npairs; ++jp) {
      const bool two = 2 * jp + 1 < nb;  // a row past the block's end is not read
      const __m512 p0 = _mm512_load_ps(St + 2 * jp * 16), p1 = two ? _mm512_load_ps(St + (2 * jp + 1) * 16) : zero;
      if (cqb) {
        for (int64_t g = 0; g < ng; ++g) {
          const float sa = ksc[2 * jp * ng + g], sb = two ? ksc[(2 * jp + 1) * ng + g] : 0.f;
          const __m512 q0 = _mm512_mul_ps(p0, _mm512_set1_ps(sa)), q1 = _mm512_mul_ps(p1, _mm512_set1_ps(sb));
          _mm512_store_si512(P2 + (g * kLaneBlock / 2 + jp) * 16, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(q1, q0)));
          __m512 z = _mm512_load_ps(pz + g * 16);
          z = _mm512_fmadd_ps(p0, _mm512_set1_ps(kzr[2 * jp * ng + g]), z);
          if (two) z = _mm512_fmadd_ps(p1, _mm512_set1_ps(kzr[(2 * jp + 1) * ng + g]), z);
          _mm512_store_ps(pz + g * 16, z);
        }
        const uint8_t* ra = k.c_codes + (j0 + 2 * jp) * k.c_sr;
        codes_to_pairs(ra, two ? ra + k.c_sr : nullptr, L, V2 + jp * vs);
      } else {
        _mm512_store_si512(P2 + jp * 16, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(p1, p0)));
        const uint16_t* v0 = k.c_res + (j0 + 2 * jp - cq.n_quant) * k.c_rsr;
        bf16_rows_to_pairs(v0, two ? v0 + k.c_rsr : nullptr, L, V2 + jp * vs);
      }
    }
    // Value sums per latent group (one range of dims each) or over the whole residual row.
    for (int64_t g = 0; g < (cqb ? ng : 1); ++g) {
      const uint32_t* P = P2 + (cqb ? g * kLaneBlock / 2 * 16 : 0);
      int64_t d0 = cqb ? g * G : 0;
      const int64_t d1 = cqb ? imin(L, d0 + G) : L;
      for (; d0 + 16 <= d1; d0 += 16) lane_pv_bf16<16>(P, npairs, V2, vs, d0, acc);
      for (; d0 + 8 <= d1; d0 += 8) lane_pv_bf16<8>(P, npairs, V2, vs, d0, acc);
      for (; d0 < d1; ++d0) lane_pv_bf16<1>(P, npairs, V2, vs, d0, acc);
    }
    j0 = j1;
  }
  for (int64_t d = 0; d < L; ++d)
    _mm512_store_ps(acc + d * 16, _mm512_add_ps(_mm512_load_ps(acc + d * 16), _mm512_load_ps(pz + (d / G) * 16)));
  store_lane_partial(m, l, acc, R, L, out);
}
#endif

void decode_lanes(const AttnArgs& a, int64_t b, int64_t s0, int64_t s1, const Partial& out) {
#ifdef __AVX512BF16__
  if (lanes_q4_apply(a)) return decode_lanes_q4(a, b, s0, s1, out);
#endif
  const int64_t R = a.Hq * a.T, hdiv = a.Hq / a.Hkv, Dv = a.Dv;
  const int64_t nh2 = a.D2 ? a.Hkv : 0;             // every RoPE head has rows (R = Hq * T)
  const int64_t Dt = a.D1 + nh2 * a.D2;             // concatenated key length
#ifdef __AVX512BF16__
  // bf16 keys are scored and summed as stored, two per instruction, read in place: every piece must hold
  // whole pairs and every RoPE head fit the segment table. Other shapes take the f32 path (about 6 % slower).
  const bool pairs = a.dtype == DType::BF16 && !a.kq && !a.k2q && a.D1 % 2 == 0 && a.D2 % 2 == 0 && nh2 <= 16;
#else
  const bool pairs = false;
#endif
  const int64_t Dp = (Dt + 1) / 2;                  // pairs per key (pairs mode)
  const int64_t ks = round_up(Dt, 16) + 16;         // row_to_f32 pads each piece to 16
  const int64_t vs = round_up(Dv, 16);              // V2 row stride (pairs mode)
  Scratch sc(Dt * 64 + kLaneBlock * 64 * 2 + Dv * 64 + kLaneBlock * ks * 4 + kLaneBlock / 2 * vs * 4 +
             Dt * 4 + 64 * 16 + (a.D1 + a.D2 + 32) * 8);
  if (!sc.ok()) return;
  float* Qt = sc.take<float>(Dt * 16);          // [Dt][16 lanes] scaled into the log2 domain, or Qp [Dp][16] pairs
  float* St = sc.take<float>(kLaneBlock * 16);  // [block][16] scores, then probabilities
  [[maybe_unused]] uint32_t* P2 = sc.take<uint32_t>(kLaneBlock / 2 * 16);  // [block/2][16] probability pairs
  float* acc = sc.take<float>(Dv * 16);         // [Dv][16]
  float* Kb = sc.take<float>(kLaneBlock * ks);  // [block][ks] concatenated f32 key rows (not in pairs mode)
  [[maybe_unused]] uint32_t* V2 = sc.take<uint32_t>(kLaneBlock / 2 * vs);  // [block/2][vs] latent pairs
  float* qcat = sc.take<float>(Dt + 16);        // one row's concatenated query
  alignas(64) int32_t pos[16];
  int32_t* kgroup = sc.take<int32_t>(a.D1 + 16);
  int32_t* k2group = sc.take<int32_t>(a.D2 + 16);
  for (int64_t i = 0; i < a.D1 + 16; ++i) kgroup[i] = a.kq && a.kq->group > 0 ? static_cast<int32_t>(i / a.kq->group) : 0;
  for (int64_t i = 0; i < a.D2 + 16; ++i) k2group[i] = a.k2q && a.k2q->group > 0 ? static_cast<int32_t>(i / a.k2q->group) : 0;
  const float c = a.scale * kLog2e;
  std::memset(Qt, 0, Dt * 64);
  std::memset(acc, 0, Dv * 64);
  std::memset(Kb, 0, kLaneBlock * ks * 4);  // padding and rows past the end of a short block stay finite
  for (int64_t r = 0; r < 16; ++r) pos[r] = kNoPos;
  auto* Qp = reinterpret_cast<uint32_t*>(Qt);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = r / a.T, t = r % a.T;
    pos[r] = static_cast<int32_t>(a.start + t);
    std::memset(qcat, 0, (Dt + 16) * 4);  // other RoPE heads' blocks stay zero
    row_to_f32(qcat, row_ptr(a.q1, a.dtype, b, h, t), a.dtype, a.D1);
    if (a.D2) row_to_f32(qcat + a.D1 + (h / hdiv) * a.D2, row_ptr(a.q2, a.dtype, b, h, t), a.dtype, a.D2);
    if (pairs) {  // bf16 -> f32 -> bf16 is exact
      for (int64_t dp = 0; dp < Dp; ++dp)
        Qp[dp * 16 + r] = f32_to_bf16(qcat[2 * dp]) | static_cast<uint32_t>(f32_to_bf16(qcat[2 * dp + 1])) << 16;
    } else {
      for (int64_t d = 0; d < Dt; ++d) Qt[d * 16 + r] = qcat[d] * c;
    }
  }
  const int64_t pmin = a.start, pmax = a.start + a.T - 1;
  const int64_t lo = imax(s0, a.window > 0 ? pmin - a.window + 1 : 0), hi = imin(s1, imin(a.S, pmax + 1));
  const bool* valid = a.valid ? a.valid + b * a.S : nullptr;
  const __m512i posv = _mm512_load_si512(pos);
  __m512 m = _mm512_set1_ps(kNegInf), l = _mm512_setzero_ps();
#ifdef __AVX512BF16__
  KeySegs segs;
  if (pairs) {
    segs.p[0] = reinterpret_cast<const uint16_t*>(row_ptr(a.k1, a.dtype, b, 0, 0));
    segs.stride[0] = a.k1.sr, segs.n[0] = a.D1, segs.qoff[0] = 0;
    for (int64_t h2 = 0; h2 < nh2; ++h2) {
      segs.p[1 + h2] = reinterpret_cast<const uint16_t*>(row_ptr(a.k2, a.dtype, b, h2, 0));
      segs.stride[1 + h2] = a.k2.sr, segs.n[1 + h2] = a.D2, segs.qoff[1 + h2] = a.D1 + h2 * a.D2;
    }
    segs.count = static_cast<int>(1 + nh2);
  }
#endif
  for (int64_t j0 = lo; j0 < hi; j0 += kLaneBlock) {
    const int64_t nb = imin(kLaneBlock, hi - j0), nb8 = round_up(nb, 8);
    // Gather the block's key rows [c | k_r of each RoPE head].
    for (int64_t j = 0; j < nb && !pairs; ++j) {
      // f32 pieces are written in increasing offset, each over the last one's padding.
      float* kr = Kb + j * ks;
      if (a.kq) dequant_row(kr, *a.kq, a.dtype, b, 0, j0 + j, a.D1, kgroup);
      else row_to_f32(kr, row_ptr(a.k1, a.dtype, b, 0, j0 + j), a.dtype, a.D1);
      for (int64_t h2 = 0; h2 < nh2; ++h2) {
        float* dst = kr + a.D1 + h2 * a.D2;
        if (a.k2q) dequant_row(dst, *a.k2q, a.dtype, b, h2, j0 + j, a.D2, k2group);
        else row_to_f32(dst, row_ptr(a.k2, a.dtype, b, h2, j0 + j), a.dtype, a.D2);
      }
    }
    // Rows nb..nb8 hold the zeros of the first memset or keys of an earlier block: finite, and masked below.
#ifdef __AVX512BF16__
    if (pairs) {
      int64_t j = 0;
      for (; j + 8 <= nb; j += 8) lane_scores_bf16_rows<8>(Qp, segs, j0 + j, St + j * 16, _mm512_set1_ps(c));
      for (; j < nb; ++j) lane_scores_bf16_rows<1>(Qp, segs, j0 + j, St + j * 16, _mm512_set1_ps(c));
    } else
#endif
    {
      for (int64_t j = 0; j < nb8; j += 8) lane_scores<8>(Qt, Dt, Kb + j * ks, ks, St + j * 16);
    }
    const __m512 al = lanes_block_softmax(a, valid, j0, nb, nb8, pmin, pmax, posv, St, m, l);
    for (int64_t d = 0; d < Dv; ++d) _mm512_store_ps(acc + d * 16, _mm512_mul_ps(al, _mm512_load_ps(acc + d * 16)));
    int64_t d0 = 0;
#ifdef __AVX512BF16__
    if (pairs) {
      // Pairs of keys: probabilities rounded to bf16 (as prefill does), latent rows interleaved.
      const int64_t npairs = (nb + 1) / 2;  // probabilities past nb are 0
      for (int64_t jp = 0; jp < npairs; ++jp) {
        const __m512i pb = (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(St + (2 * jp + 1) * 16),
                                                        _mm512_load_ps(St + 2 * jp * 16));
        _mm512_store_si512(P2 + jp * 16, interleave_bf16(pb));
        const uint16_t* v0 = segs.p[0] + (j0 + 2 * jp) * segs.stride[0];
        const bool two = 2 * jp + 1 < nb;  // a row past the block's end is not read
        bf16_rows_to_pairs(v0, two ? v0 + segs.stride[0] : nullptr, Dv, V2 + jp * vs);
      }
      for (; d0 + 16 <= Dv; d0 += 16) lane_pv_bf16<16>(P2, npairs, V2, vs, d0, acc);
      for (; d0 + 8 <= Dv; d0 += 8) lane_pv_bf16<8>(P2, npairs, V2, vs, d0, acc);
      for (; d0 < Dv; ++d0) lane_pv_bf16<1>(P2, npairs, V2, vs, d0, acc);
      continue;
    }
#endif
    for (; d0 + 16 <= Dv; d0 += 16) lane_pv<16>(St, nb8, Kb, ks, d0, acc);
    for (; d0 + 8 <= Dv; d0 += 8) lane_pv<8>(St, nb8, Kb, ks, d0, acc);
    for (; d0 < Dv; ++d0) lane_pv<1>(St, nb8, Kb, ks, d0, acc);
  }
  store_lane_partial(m, l, acc, R, Dv, out);
}

// One query row (position pos) against a block of kDecBlock keys from j0, nb of them real: masks the scores
// (log2 domain) of keys the row does not see unless the whole block is visible, writes the block's
// probabilities against the updated running max to pr, and rescales the row's accumulator acc[Dvp].
inline void split_row_softmax(const AttnArgs& a, const bool* valid, bool full, int64_t j0, int64_t nb, int64_t pos,
                              __m512 scores, float* pr, float& m, float& l, float* acc, int64_t Dvp) {
  _mm512_storeu_ps(pr, scores);
  int64_t j = 0;
  if (!full)
    for (; j < nb; ++j) {
      const int64_t s = j0 + j;
      const bool vis = s <= pos && (a.window <= 0 || s > pos - a.window) && (!valid || valid[s]);
      if (!vis) pr[j] = kNegInf;
    }
  for (j = nb; j < kDecBlock; ++j) pr[j] = kNegInf;
  const __m512 sv = _mm512_loadu_ps(pr);
  const float mx = _mm512_reduce_max_ps(sv), mo = m, mn = mo > mx ? mo : mx;
  const float mu = mn == kNegInf ? 0.f : mn;
  const __m512 p = exp2_ps(_mm512_sub_ps(sv, _mm512_set1_ps(mu)));
  _mm512_storeu_ps(pr, p);
  const float al = mo == kNegInf ? 0.f : exp2f(mo - mu);
  l = l * al + _mm512_reduce_add_ps(p);
  m = mn;
  if (al != 1.f) {
    const __m512 alv = _mm512_set1_ps(al);
    for (int64_t d = 0; d < Dvp; d += 16) _mm512_storeu_ps(acc + d, _mm512_mul_ps(alv, _mm512_loadu_ps(acc + d)));
  }
}

#ifdef __AVX512BF16__
// ---------------------------------------------------------------------------------------------
// decode_split in bf16 over 4-bit keys quantized per channel (KIVI) and values quantized per token, read in
// place, or over a bf16 cache. Codes 0..15 are exact in bf16, so scale and zero point act on sums:
//   keys:   q·x = (q∘scale)·code + q·zero, q∘scale rounded to bf16 once per group of key slots; a key's
//           codes become its bf16 row through a 16-entry vpermw and are scored by vdpbf16ps as a stored
//           bf16 key is;
//   values: Σ_j p_j x_jd = Σ_j (p_j scale_jg) code_jd + Σ_j p_j zero_jg per value group g, the codes of two
//           keys interleaved into bf16 pairs as codes_to_pairs does for the latent.
// Values of other widths, or groups that do not split the row into whole vectors, are dequantized to bf16
// pairs instead. Blocks never straddle a buffer's n_quant or a key group; slots past a buffer's n_quant are
// read from its bf16 residual.
// A bf16 cache takes the same path, as the residual of a buffer with nothing quantized.
inline bool split_bf16_apply(const AttnArgs& a) {
  const QuantDesc* k = a.kq;
  const QuantDesc* v = a.vq;
  const bool q4 = k && v && k != v && k->bits == 4 && k->per_channel && k->group > 0 && !v->per_channel;
  return a.dtype == DType::BF16 && (q4 || (!k && !v)) && a.D2 == 0 && a.D1 % 32 == 0 && a.Hq / a.groups * a.T <= 64;
}

// 32 codes (16 bytes, low nibble first) -> their bf16 values, in order.
inline __m512i codes32_to_bf16(const uint8_t* p) {
  const __m512i tbl = _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(q4_tables().bf)));
  const __m512i byte = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // Each 32-bit lane: low code in its low half, high code in its high half (indices 0..15 of the table).
  const __m512i idx = _mm512_and_si512(_mm512_or_si512(byte, _mm512_slli_epi32(byte, 12)), _mm512_set1_epi32(0x000F000F));
  return _mm512_permutexvar_epi16(idx, tbl);
}

void decode_split_bf16(const AttnArgs& a, const QuantDesc& kq, const QuantDesc& vq, int64_t b, int64_t grp, int64_t s0,
                       int64_t s1, const Partial& out) {
  const int64_t g = a.Hq / a.groups, R = g * a.T, hdiv = a.Hq / a.Hkv, D = a.D1, Dv = a.Dv, Dvp = round_up(Dv, 16);
  const int64_t kv0 = grp * g / hdiv;
  const bool v4 = vq.bits == 4 && (vq.group >= Dv || vq.group % 16 == 0);  // values summed on their codes
  const int64_t Gv = v4 ? imin(vq.group, Dv) : Dv, ngv = (Dv + Gv - 1) / Gv;
  // acc rows: Σ p·scale·code (or Σ p·x) over Dvp columns, then Σ p·zero of each value group, so that the
  // running-max rescale covers both.
  const int64_t Da = Dvp + round_up(ngv, 16);
  Scratch sc(R * D * 2 + R * 4 + R * kDecBlock * 4 + ngv * kDecBlock / 2 * R * 4 + R * Da * 4 + R * 12 +
             kDecBlock * D * 2 + kDecBlock / 2 * Da * 4 + 2 * Dvp * 4 + (Dvp + 16) * 4 + R * 8 + 64 * 16);
  if (!sc.ok()) return;
  auto* Qs = sc.take<uint16_t>(R * D);              // [R][D] bf16 q times the current key group's scales
  float* bias = sc.take<float>(R);                  // [R] q·zero of that group
  float* P = sc.take<float>(R * kDecBlock);         // [R][block] scores, then probabilities
  auto* Pp = sc.take<uint32_t>(ngv * kDecBlock / 2 * R);  // [ngv][block/2][R] (p·scale) or p pairs
  float* acc = sc.take<float>(R * Da);
  float* m = sc.take<float>(R);
  float* l = sc.take<float>(R);
  int64_t* pos = sc.take<int64_t>(R);
  auto* Kb = sc.take<uint16_t>(kDecBlock * D);      // [block][D] keys' codes as bf16
  auto* V2 = sc.take<uint32_t>(kDecBlock / 2 * Da);   // [block/2][Da] value pairs
  float* Vf = sc.take<float>(2 * Dvp);              // two dequantized value rows
  int32_t* vgroup = sc.take<int32_t>(Dvp + 16);
  const uint16_t** Qb = sc.take<const uint16_t*>(R);  // q rows as stored (residual keys)
  for (int64_t i = 0; i < Dvp + 16; ++i) vgroup[i] = static_cast<int32_t>(i / vq.group);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = grp * g + r / a.T, t = r % a.T;
    pos[r] = a.start + t;
    m[r] = kNegInf;
    l[r] = 0.f;
    Qb[r] = reinterpret_cast<const uint16_t*>(row_ptr(a.q1, DType::BF16, b, h, t));
  }
  std::memset(acc, 0, R * Da * 4);
  std::memset(Vf, 0, 2 * Dvp * 4);
  const float c = a.scale * kLog2e;
  const int64_t pmin = a.start, pmax = a.start + a.T - 1;
  const int64_t lo = imax(s0, a.window > 0 ? pmin - a.window + 1 : 0), hi = imin(s1, imin(a.S, pmax + 1));
  const bool* valid = a.valid ? a.valid + b * a.S : nullptr;
  const uint8_t* kcodes = kq.data ? kq.data + b * kq.d_sb + kv0 * kq.d_sh : nullptr;  // null: a bf16 cache
  const uint8_t* vcodes = vq.data ? vq.data + b * vq.d_sb + kv0 * vq.d_sh : nullptr;
  const int64_t ksb = b * kq.s_sb + kv0 * kq.s_sh, vsb = b * vq.s_sb + kv0 * vq.s_sh;
  int64_t key_group = -1;  // the group of slots whose scales Qs and bias hold
  for (int64_t j0 = lo; j0 < hi;) {
    int64_t j1 = imin(hi, j0 + kDecBlock);
    const bool kqb = j0 < kq.n_quant, vqb = j0 < vq.n_quant;
    if (kqb) j1 = imin(j1, imin(kq.n_quant, (j0 / kq.group + 1) * kq.group));
    if (vqb) j1 = imin(j1, vq.n_quant);
    const int64_t nb = j1 - j0;
    // Stored bf16 rows four blocks ahead, as decode_split prefetches them (codes are not: no gain measured).
    if (j0 + 5 * kDecBlock <= hi) {
      const int64_t s = j0 + 4 * kDecBlock;
      for (int64_t j = 0; j < kDecBlock; ++j) {
        if (s >= kq.n_quant) {
          const char* kr = row_ptr(kq.residual, DType::BF16, b, kv0, s + j - kq.n_quant);
          for (int64_t o = 0; o < D * 2; o += 64) _mm_prefetch(kr + o, _MM_HINT_T0);
        }
        if (s >= vq.n_quant) {
          const char* vr = row_ptr(vq.residual, DType::BF16, b, kv0, s + j - vq.n_quant);
          for (int64_t o = 0; o < Dv * 2; o += 64) _mm_prefetch(vr + o, _MM_HINT_T0);
        }
      }
    }
    if (kqb && j0 / kq.group != key_group) {
      key_group = j0 / kq.group;
      const uint16_t* scl = kq.scale + ksb + key_group * kq.s_sr;
      const uint16_t* zr = kq.zero + ksb + key_group * kq.s_sr;
      for (int64_t r = 0; r < R; ++r) {
        __m512 bz = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
          const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(Qb[r] + d))), 16));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(Qs + r * D + d),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(x, load_f16x16(scl + d, 0xffff))));
          bz = _mm512_fmadd_ps(x, load_f16x16(zr + d, 0xffff), bz);
        }
        bias[r] = _mm512_reduce_add_ps(bz);
      }
    }
    const uint16_t* kbrow[kDecBlock];
    for (int64_t j = 0; j < nb; ++j) {
      if (kqb) {
        for (int64_t d = 0; d < D; d += 32)
          _mm512_storeu_si512(Kb + j * D + d, codes32_to_bf16(kcodes + (j0 + j) * kq.d_sr + d / 2));
        kbrow[j] = Kb + j * D;
      } else {
        kbrow[j] = reinterpret_cast<const uint16_t*>(row_ptr(kq.residual, DType::BF16, b, kv0, j0 + j - kq.n_quant));
      }
    }
    for (int64_t j = nb; j < kDecBlock; ++j) kbrow[j] = kbrow[0];
    const bool full = block_fully_visible(a, valid, j0, nb, pmin, pmax);
    for (int64_t r = 0; r < R; ++r) {
      __m512 dacc[kDecBlock];
      for (int j = 0; j < kDecBlock; ++j) dacc[j] = _mm512_setzero_ps();
      dot16_bf16(kqb ? Qs + r * D : Qb[r], kbrow, D, dacc);
      __m512 sums = reduce16(dacc);
      if (kqb) sums = _mm512_add_ps(sums, _mm512_set1_ps(bias[r]));
      split_row_softmax(a, valid, full, j0, nb, pos[r], _mm512_mul_ps(sums, _mm512_set1_ps(c)), P + r * kDecBlock,
                        m[r], l[r], acc + r * Da, Da);
    }
    // Pairs of keys, probabilities rounded to bf16 as prefill rounds them (probabilities past nb are 0).
    const int64_t npairs = (nb + 1) / 2;
    const bool codes = v4 && vqb;
    if (codes) {
      // Per value group: each row's p·scale as bf16 pairs of keys, and Σ p·zero into the group's column.
      for (int64_t gv = 0; gv < ngv; ++gv) {
        alignas(32) uint16_t sh[kDecBlock] = {}, zh[kDecBlock] = {};
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t so = vsb + (j0 + j) * vq.s_sr + gv;
          sh[j] = vq.scale[so], zh[j] = vq.zero[so];
        }
        const __m512 sv = load_f16x16(sh, 0xffff), zv = load_f16x16(zh, 0xffff);
        for (int64_t r = 0; r < R; ++r) {
          const __m512 p = _mm512_loadu_ps(P + r * kDecBlock);
          acc[r * Da + Dvp + gv] += _mm512_reduce_add_ps(_mm512_mul_ps(p, zv));
          alignas(32) uint32_t pairs[kDecBlock / 2];
          _mm256_store_si256(reinterpret_cast<__m256i*>(pairs), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(p, sv)));
          for (int64_t jp = 0; jp < npairs; ++jp) Pp[(gv * kDecBlock / 2 + jp) * R + r] = pairs[jp];
        }
      }
    }
    for (int64_t jp = 0; jp < npairs; ++jp) {
      const bool two = 2 * jp + 1 < nb;  // a row past the block's end is not read
      const int64_t sa = j0 + 2 * jp;
      if (codes) {
        const uint8_t* ra = vcodes + sa * vq.d_sr;
        codes_to_pairs(ra, two ? ra + vq.d_sr : nullptr, Dv, V2 + jp * Da);
        continue;
      }
      if (!vqb) {
        const auto* v0 = reinterpret_cast<const uint16_t*>(row_ptr(vq.residual, DType::BF16, b, kv0, sa - vq.n_quant));
        bf16_rows_to_pairs(v0, two ? v0 + vq.residual.sr : nullptr, Dv, V2 + jp * Da);
      } else {
        dequant_row(Vf, vq, DType::BF16, b, kv0, sa, Dv, vgroup);
        if (two) dequant_row(Vf + Dvp, vq, DType::BF16, b, kv0, sa + 1, Dv, vgroup);
        else std::memset(Vf + Dvp, 0, Dvp * 4);
        for (int64_t d = 0; d < Dvp; d += 16)
          _mm512_storeu_si512(V2 + jp * Da + d, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(
                                                    _mm512_loadu_ps(Vf + Dvp + d), _mm512_loadu_ps(Vf + d))));
      }
      for (int64_t r = 0; r < R; ++r)
        Pp[jp * R + r] = f32_to_bf16(P[r * kDecBlock + 2 * jp]) |
                         static_cast<uint32_t>(f32_to_bf16(P[r * kDecBlock + 2 * jp + 1])) << 16;
    }
    // Value sums per value group (codes) or over the whole row.
    for (int64_t gv = 0; gv < (codes ? ngv : 1); ++gv) {
      const int64_t d0 = codes ? gv * Gv : 0, d1 = codes ? imin(Dv, d0 + Gv) : Dv;
      for_row_blocks(R, [&](int64_t r0, int64_t rb) {
        PVBf16 pv{Pp + gv * kDecBlock / 2 * R, R, r0, npairs, V2, Da, acc};
        if (rb == 4) dispatch_chunks<4>(d0, d1, pv); else dispatch_chunks<1>(d0, d1, pv);
      });
    }
    j0 = j1;
  }
  for (int64_t r = 0; r < R; ++r) {
    out.m[r] = m[r];
    out.l[r] = l[r];
    for (int64_t d = 0; d < Dv; ++d) out.acc[r * Dv + d] = acc[r * Da + d] + (v4 ? acc[r * Da + Dvp + d / Gv] : 0.f);
  }
}
#endif

void decode_split(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  if (lanes_apply(a)) return decode_lanes(a, b, s0, s1, out);
#ifdef __AVX512BF16__
  if (split_bf16_apply(a)) {
    if (a.kq) return decode_split_bf16(a, *a.kq, *a.vq, b, grp, s0, s1, out);
    // A bf16 cache is the in-place path's residual from slot 0 (1.2x faster than the f32 sums below at 32K).
    QuantDesc kd, vd;
    kd.residual = a.k1, vd.residual = a.v;
    kd.group = 1, vd.group = a.Dv;
    return decode_split_bf16(a, kd, vd, b, grp, s0, s1, out);
  }
#endif
  const int64_t g = a.Hq / a.groups, R = g * a.T, hdiv = a.Hq / a.Hkv;
  const int64_t D1r = round_up(a.D1, 16), D2r = round_up(a.D2, 16), Dv = a.Dv, Dvp = round_up(Dv, 16);
  const bool f32 = a.dtype == DType::F32 && a.D1 % 16 == 0 && Dv % 16 == 0 && !a.kq && !a.vq;
  const bool v_is_k = a.v.p != nullptr && a.v.p == a.k1.p && a.v.sb == a.k1.sb && a.v.sh == a.k1.sh && a.v.sr == a.k1.sr && Dv == a.D1;
#ifdef __AVX512BF16__
  // bf16 keys are scored as stored; the scale is applied to the sums instead of to q.
  const bool bf16dot = a.dtype == DType::BF16 && !a.kq && a.D1 % 32 == 0;
#else
  const bool bf16dot = false;
#endif
  Scratch sc(R * (D1r + D2r) * 4 + R * kDecBlock * 4 + R * Dvp * 4 + R * 8 * 4 + kDecBlock * (D1r + Dvp) * 4 +
             kDecBlock * R * D2r * 4 + (D1r + Dvp + D2r) * 4 + R * 8 + 64 * 16);
  if (!sc.ok()) return;
  float* Q1 = sc.take<float>(R * D1r);  // [R][D1r] f32, scaled into the log2 domain
  float* Q2 = sc.take<float>(R * D2r);
  float* P = sc.take<float>(R * kDecBlock);  // [R][block] scores, then probabilities
  float* acc = sc.take<float>(R * Dvp);
  float* m = sc.take<float>(R);
  float* l = sc.take<float>(R);
  int64_t* pos = sc.take<int64_t>(R);
  int64_t* kvh = sc.take<int64_t>(R);
  float* Kf = sc.take<float>(kDecBlock * D1r);
  float* Vf = sc.take<float>(kDecBlock * Dvp);
  float* K2f = sc.take<float>(kDecBlock * R * D2r);  // per row's KV head (rows of one head share it)
  int32_t* kgroup = sc.take<int32_t>(D1r);  // element -> per-token quantization group
  int32_t* vgroup = sc.take<int32_t>(Dvp);
  int32_t* k2group = sc.take<int32_t>(D2r);
  const uint16_t** Qb = sc.take<const uint16_t*>(R);  // bf16dot: q rows as stored
  for (int64_t i = 0; i < D2r; ++i) k2group[i] = a.k2q && a.k2q->group > 0 ? static_cast<int32_t>(i / a.k2q->group) : 0;
  for (int64_t i = 0; i < D1r; ++i) kgroup[i] = a.kq && a.kq->group > 0 ? static_cast<int32_t>(i / a.kq->group) : 0;
  for (int64_t i = 0; i < Dvp; ++i) vgroup[i] = a.vq && a.vq->group > 0 ? static_cast<int32_t>(i / a.vq->group) : 0;
  const float c = a.scale * kLog2e;
  int64_t pmin = a.start, pmax = a.start + a.T - 1;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = grp * g + r / a.T, t = r % a.T;
    pos[r] = a.start + t;
    kvh[r] = h / hdiv;
    m[r] = kNegInf;
    l[r] = 0.f;
    const float qscale = bf16dot ? 1.f : c;
    Qb[r] = reinterpret_cast<const uint16_t*>(row_ptr(a.q1, a.dtype, b, h, t));
    if (!bf16dot) {  // bf16dot reads q as stored
      row_to_f32(Q1 + r * D1r, row_ptr(a.q1, a.dtype, b, h, t), a.dtype, a.D1);
      for (int64_t d = 0; d < D1r; ++d) Q1[r * D1r + d] *= c;
    }
    if (a.D2) {
      row_to_f32(Q2 + r * D2r, row_ptr(a.q2, a.dtype, b, h, t), a.dtype, a.D2);
      for (int64_t d = 0; d < D2r; ++d) Q2[r * D2r + d] *= qscale;
    }
  }
  for (int64_t i = 0; i < R * Dvp; ++i) acc[i] = 0.f;
  const int64_t kv0 = kvh[0];  // k1 and v are shared by every row (checked by the front end)
  const int64_t lo = imax(s0, a.window > 0 ? pmin - a.window + 1 : 0), hi = imin(s1, imin(a.S, pmax + 1));
  const bool* valid = a.valid ? a.valid + b * a.S : nullptr;
  const float* krow[kDecBlock];
  const float* vrow[kDecBlock];
  const uint16_t* kbrow[kDecBlock];
  const int64_t kbytes = a.D1 * elem_size(a.dtype), vbytes = Dv * elem_size(a.dtype);
  for (int64_t j0 = lo; j0 < hi; j0 += kDecBlock) {
    const int64_t nb = imin(kDecBlock, hi - j0);
    // Prefetch the K and V rows four blocks ahead: the rows of one head are contiguous, but a split streams
    // two arrays at a time and the hardware prefetcher alone leaves DRAM latency exposed (long contexts:
    // 2.4 -> 1.2 ms for a bf16 SmolLM layer at S = 32K, build/bench_kernels --only decode).
    // Quantized rows are not prefetched: their dequantization, not memory, bounds them (no gain measured).
    if (!a.kq && !a.vq && j0 + 4 * kDecBlock < hi)
      for (int64_t j = 0; j < kDecBlock; ++j) {
        const char* kr = row_ptr(a.k1, a.dtype, b, kv0, j0 + 4 * kDecBlock + j);
        const char* vr = row_ptr(a.v, a.dtype, b, kv0, j0 + 4 * kDecBlock + j);
        for (int64_t o = 0; o < kbytes; o += 64) _mm_prefetch(kr + o, _MM_HINT_T0);
        for (int64_t o = 0; o < vbytes; o += 64) _mm_prefetch(vr + o, _MM_HINT_T0);
      }
    for (int64_t j = 0; j < nb; ++j) {
      if (bf16dot) {
        kbrow[j] = reinterpret_cast<const uint16_t*>(row_ptr(a.k1, a.dtype, b, kv0, j0 + j));
        continue;
      }
      if (a.kq) {
        dequant_row(Kf + j * D1r, *a.kq, a.dtype, b, kv0, j0 + j, a.D1, kgroup);
        krow[j] = Kf + j * D1r;
        continue;
      }
      const char* kr = row_ptr(a.k1, a.dtype, b, kv0, j0 + j);
      if (f32) {
        krow[j] = reinterpret_cast<const float*>(kr);
      } else {
        row_to_f32(Kf + j * D1r, kr, a.dtype, a.D1);
        krow[j] = Kf + j * D1r;
      }
    }
    for (int64_t j = nb; j < kDecBlock; ++j) krow[j] = krow[0], kbrow[j] = kbrow[0];
    // Blocks every row sees whole skip the per-key visibility test.
    const bool full = block_fully_visible(a, valid, j0, nb, pmin, pmax);
    // K2 rows for each distinct KV head among the rows (rows are head-major, so runs share one).
    for (int64_t r = 0; r < R && a.D2; ++r) {
      if (r > 0 && kvh[r] == kvh[r - 1]) continue;
      for (int64_t j = 0; j < nb; ++j) {
        if (a.k2q)
          dequant_row(K2f + (r * kDecBlock + j) * D2r, *a.k2q, a.dtype, b, kvh[r], j0 + j, a.D2, k2group);
        else
          row_to_f32(K2f + (r * kDecBlock + j) * D2r, row_ptr(a.k2, a.dtype, b, kvh[r], j0 + j), a.dtype, a.D2);
      }
    }
    int64_t k2base = 0;
    const float* k2row[kDecBlock];
    for (int64_t r = 0; r < R; ++r) {
      if (r == 0 || kvh[r] != kvh[r - 1]) {
        k2base = r;
        for (int64_t j = 0; j < kDecBlock; ++j) k2row[j] = K2f + (k2base * kDecBlock + (j < nb ? j : 0)) * D2r;
      }
      float* pr = P + r * kDecBlock;
      __m512 dacc[kDecBlock];
      for (int j = 0; j < kDecBlock; ++j) dacc[j] = _mm512_setzero_ps();
#ifdef __AVX512BF16__
      if (bf16dot)
        dot16_bf16(Qb[r], kbrow, a.D1, dacc);
      else
#endif
        dot16(Q1 + r * D1r, krow, D1r, dacc);
      if (a.D2) dot16(Q2 + r * D2r, k2row, D2r, dacc);
      __m512 sums = reduce16(dacc);
      if (bf16dot) sums = _mm512_mul_ps(sums, _mm512_set1_ps(c));
      split_row_softmax(a, valid, full, j0, nb, pos[r], sums, pr, m[r], l[r], acc + r * Dvp, Dvp);
    }
    for (int64_t j = 0; j < nb; ++j) {
      if (a.vq && a.vq == a.kq && Dv == a.D1) {
        vrow[j] = krow[j];  // quantized MLA latent: dequantized once, as key and as value
      } else if (a.vq) {
        dequant_row(Vf + j * Dvp, *a.vq, a.dtype, b, kv0, j0 + j, Dv, vgroup);
        vrow[j] = Vf + j * Dvp;
      } else if (v_is_k && !f32 && !bf16dot) {
        vrow[j] = krow[j];  // MLA: the latent is both key and value
      } else {
        const char* vr = row_ptr(a.v, a.dtype, b, kv0, j0 + j);
        if (f32) {
          vrow[j] = reinterpret_cast<const float*>(vr);
        } else {
          row_to_f32(Vf + j * Dvp, vr, a.dtype, Dv);
          vrow[j] = Vf + j * Dvp;
        }
      }
    }
    // P is [R][block]; pv_f32 reads St[j * Rp + r], so pass it transposed through strides.
    float Pt[kDecBlock * 64];
    const int64_t Rt = R;
    if (R <= 64) {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < nb; ++j) Pt[j * Rt + r] = P[r * kDecBlock + j];
      for_row_blocks(R, [&](int64_t r0, int64_t rb) {
        PVF32 pv{Pt, Rt, r0, nb, vrow, acc, Dvp};
        if (rb == 4) dispatch_chunks<4>(Dv, pv); else dispatch_chunks<1>(Dv, pv);
      });
    } else {
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < nb; ++j) {
          const __m512 p = _mm512_set1_ps(P[r * kDecBlock + j]);
          for (int64_t d = 0; d < Dvp; d += 16)
            _mm512_storeu_ps(acc + r * Dvp + d,
                             _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(tail_mask(Dv - d), vrow[j] + d),
                                             _mm512_loadu_ps(acc + r * Dvp + d)));
        }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    out.m[r] = m[r];
    out.l[r] = l[r];
    for (int64_t d = 0; d < Dv; ++d) out.acc[r * Dv + d] = acc[r * Dvp + d];
  }
}

}  // namespace
}  // namespace mha2mla::kernels
