#pragma once
// AVX-512 flash prefill: one tile of query rows of a KV head against every visible key (AttnKernels::prefill_tile).
// Part of the AVX-512 attention kernels (attention_avx512_impl.h); internal linkage, compiled with -mavx512* only.
#include "kernels/attention_avx512_common.h"

namespace mha2mla::kernels {
namespace {
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

// kBf16: the CPU has vdpbf16ps, and bf16 tiles are scored and summed on pairs as stored.
template <bool kBf16>
void prefill_tile(const AttnArgs& a, int64_t b, int64_t kvh, int64_t t0, int64_t tq) {
  const int64_t g = a.Hq / a.Hkv, R = g * tq, NV = (R + 15) / 16, Rp = NV * 16;
  const int64_t D = a.D1, Dv = a.Dv, Dvp = round_up(Dv, 16);
  const bool pairs = kBf16 && all_bf16(a);  // D even is checked by the front end
  const DType kt = a.kv_dtype;
  const bool conv_k = !pairs && kt != DType::F32, conv_v = kt != DType::F32 || (Dv % 16) != 0;
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
      const char* kr = row_ptr(a.k1, kt, b, kvh, j0 + j);
      krow16[j] = reinterpret_cast<const uint16_t*>(kr);
      if (conv_k) {
        row_to_f32(Kf + j * Dr, kr, kt, D);
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
#define MHA2MLA_QK_BF16(NVV, KJ)                                                                          \
  do {                                                                                                    \
    if constexpr (kBf16)                                                                                  \
      qk_bf16<NVV, KJ>(reinterpret_cast<const uint32_t*>(Qt), Rp, D, krow16 + j, St + j * Rp, rv0, c); \
  } while (0)
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
      if constexpr (kBf16) {
      const int64_t npairs = (nb + 1) / 2;
      auto* Vp = reinterpret_cast<uint32_t*>(Vf);
      for (int64_t jp = 0; jp < npairs; ++jp) {
        const int64_t j = 2 * jp;
        const bool two = j + 1 < nb;
        const auto* v0 = reinterpret_cast<const uint16_t*>(row_ptr(a.v, kt, b, kvh, j0 + j));
        const auto* v1 = two ? reinterpret_cast<const uint16_t*>(row_ptr(a.v, kt, b, kvh, j0 + j + 1)) : v0;
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
      }
    } else {
      for (int64_t j = 0; j < nb; ++j) {
        const char* vr = row_ptr(a.v, kt, b, kvh, j0 + j);
        if (conv_v) {
          row_to_f32(Vf + j * Dvp, vr, kt, Dv);
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

}  // namespace
}  // namespace mha2mla::kernels
