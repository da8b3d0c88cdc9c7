#pragma once
// AVX-512 absorbed MLA decode with query rows as SIMD lanes (decode_lanes), over bf16/f32/f16 caches and, with
// vdpbf16ps, over 4-bit latents and rotary keys read in place. Part of the AVX-512 attention kernels
// (attention_avx512_impl.h); internal linkage, compiled with -mavx512* only.
#include "kernels/attention_avx512_common.h"

namespace mha2mla::kernels {
namespace {
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

// ---------------------------------------------------------------------------------------------
// decode_lanes over a 4-bit latent (per-token groups) and 4-bit rotary keys (per channel, KIVI), read in
// place. Codes 0..15 are exact in bf16, so every byte becomes the bf16 pair of its two codes (a 256-entry
// table) and scores run on vdpbf16ps as they do on bf16 storage; scales and zero points act on the sums:
//   latent group g of key j:   q·x = scale_gj (q·code) + zero_gj Σq
//   rotary keys (per channel): q·x = (q∘scale)·code + q·zero, q∘scale rounded to bf16 once per token group
//   values, per latent group:  Σ_j p_j x_jd = Σ_j (p_j scale_gj) code_jd + Σ_j p_j zero_gj
// so a key costs a bf16 key's multiply-adds plus the table lookups and scale terms, from a quarter of the bytes
// (about 1.5x the bf16 kernel's time where both are compute-bound, docs/performance.md). Slots past a buffer's n_quant are
// read from its bf16 residual. 8-bit and E4M3 latents and rotary keys (int8; fp8, fp8-flashmla) take the same
// path: their values are exact in bf16 too (a 256-entry table per byte), two bytes a pair; E4M3 has no zero point.
// The codes (PairCodes) decode_lanes_codes reads for this decode_lanes call (a 4-bit, 8-bit or E4M3 latent per
// token; rotary keys none, all in the bf16 residual, or per channel in the same codes), or -1 where it does not
// apply.
inline int lanes_codes_apply(const AttnArgs& a) {
  const QuantDesc* c = a.kq;
  const QuantDesc* r = a.k2q;
  if (!all_bf16(a) || !c || c->per_channel || c->group % 2 != 0 || a.D1 % 2 != 0 || a.D2 % 2 != 0 ||
      a.Hkv > 16)
    return -1;
  const int codes = pair_codes(*c);
  const bool rotary = a.D2 == 0 || (r && (r->n_quant == 0 || (r->codes == c->codes && r->bits == c->bits &&
                                                                r->per_channel && r->group > 0)));
  return rotary ? codes : -1;
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
template <int KJ, PairCodes C>
inline void dp_code_rows(const uint32_t* Q, const uint8_t* base, int64_t rs, int64_t n, __m512* acc) {
  if constexpr (C == PairCodes::Uint4) {  // a byte holds the pair
    const uint32_t* tab = q4_tables().pair;
    for (int64_t i = 0; i < n; ++i) {
      const __m512bh qv = (__m512bh)_mm512_load_si512(Q + i * 16);
      for (int j = 0; j < KJ; ++j)
        acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(tab[base[j * rs + i]])));
    }
  } else {  // two bytes hold the pair
    const uint16_t* tab = byte_code_table<C>();
    for (int64_t i = 0; i < n; ++i) {
      const __m512bh qv = (__m512bh)_mm512_load_si512(Q + i * 16);
      for (int j = 0; j < KJ; ++j) {
        const uint8_t* p = base + j * rs + 2 * i;
        const uint32_t pair = tab[p[0]] | static_cast<uint32_t>(tab[p[1]]) << 16;
        acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(pair)));
      }
    }
  }
}

// St[j][lanes] for KJ keys from slot s: latent then rotary heads, in the log2 domain (c).
template <int KJ, PairCodes C>
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
      dp_code_rows<KJ, C>(Qp + p0 * 16, k.c_codes + s * k.c_sr + p0 * bytes_per_pair(C), k.c_sr, p1 - p0, acc);
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
    if (rq) dp_code_rows<KJ, C>(q, k.r_codes[h] + s * k.r_sr, k.r_sr, k.Rp2, tot);
    else dp_bf16_rows<KJ>(q, k.r_res[h] + (s - n_r) * k.r_rsr, k.r_rsr, k.Rp2, tot);
  }
  const __m512 bv = rq ? _mm512_load_ps(bias) : _mm512_setzero_ps();
  for (int j = 0; j < KJ; ++j) _mm512_store_ps(St + j * 16, _mm512_mul_ps(_mm512_add_ps(tot[j], bv), c));
}

template <PairCodes C>
void decode_lanes_codes(const AttnArgs& a, int64_t b, int64_t s0, int64_t s1, const Partial& out) {
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
          if constexpr (has_zero(C)) {
            const __m512 v0 = _mm512_mul_ps(x0, _mm512_set1_ps(half_to_f32(rq->scale[so + 2 * i])));
            const __m512 v1 = _mm512_mul_ps(x1, _mm512_set1_ps(half_to_f32(rq->scale[so + 2 * i + 1])));
            _mm512_store_si512(Qrs + (h * k.Rp2 + i) * 16, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(v1, v0)));
            bz = _mm512_fmadd_ps(x0, _mm512_set1_ps(half_to_f32(rq->zero[so + 2 * i])), bz);
            bz = _mm512_fmadd_ps(x1, _mm512_set1_ps(half_to_f32(rq->zero[so + 2 * i + 1])), bz);
          } else {  // f32 scales, no zero point
            const __m512 v0 = _mm512_mul_ps(x0, _mm512_set1_ps(rq->scale32[so + 2 * i]));
            const __m512 v1 = _mm512_mul_ps(x1, _mm512_set1_ps(rq->scale32[so + 2 * i + 1]));
            _mm512_store_si512(Qrs + (h * k.Rp2 + i) * 16, interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(v1, v0)));
          }
        }
      }
      _mm512_store_ps(bias, bz);
    }
    if (cqb) {
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t so = b * cq.s_sb + (j0 + j) * cq.s_sr;
        for (int64_t g = 0; g < ng; ++g) {
          if constexpr (has_zero(C)) {
            ksc[j * ng + g] = half_to_f32(cq.scale[so + g]);
            kzr[j * ng + g] = half_to_f32(cq.zero[so + g]);
          } else {
            ksc[j * ng + g] = cq.scale32[so + g];  // kzr stays 0
          }
        }
      }
    }
    const uint32_t* Qrot = rqb ? Qrs : Qr;
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8)
      lane_scores_q4<8, C>(k, cqb, rqb, j0 + j, cq.n_quant, rq ? rq->n_quant : 0, Qp, Qrot, sumq, ksc + j * ng,
                        kzr + j * ng, bias, St + j * 16, cv);
    for (; j < nb; ++j)
      lane_scores_q4<1, C>(k, cqb, rqb, j0 + j, cq.n_quant, rq ? rq->n_quant : 0, Qp, Qrot, sumq, ksc + j * ng,
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
        if constexpr (C == PairCodes::Uint4) codes_to_pairs(ra, two ? ra + k.c_sr : nullptr, L, V2 + jp * vs);
        else byte_rows_to_pairs<C>(ra, two ? ra + k.c_sr : nullptr, L, V2 + jp * vs);
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

// kBf16: the CPU has vdpbf16ps (bf16 caches scored and summed on pairs, 4-bit ones in place).
template <bool kBf16>
void decode_lanes(const AttnArgs& a, int64_t b, int64_t s0, int64_t s1, const Partial& out) {
  if constexpr (kBf16) {
    const int codes = lanes_codes_apply(a);
    using P = PairCodes;
    if (codes == static_cast<int>(P::Uint4)) return decode_lanes_codes<P::Uint4>(a, b, s0, s1, out);
    if (codes == static_cast<int>(P::Uint8)) return decode_lanes_codes<P::Uint8>(a, b, s0, s1, out);
    if (codes == static_cast<int>(P::E4M3)) return decode_lanes_codes<P::E4M3>(a, b, s0, s1, out);
  }
  const int64_t R = a.Hq * a.T, hdiv = a.Hq / a.Hkv, Dv = a.Dv;
  const int64_t nh2 = a.D2 ? a.Hkv : 0;             // every RoPE head has rows (R = Hq * T)
  const int64_t Dt = a.D1 + nh2 * a.D2;             // concatenated key length
  // bf16 keys are scored and summed as stored, two per instruction, read in place: every piece must hold
  // whole pairs and every RoPE head fit the segment table. Other shapes take the f32 path (about 6 % slower).
  const bool pairs =
      kBf16 && all_bf16(a) && !a.kq && !a.k2q && a.D1 % 2 == 0 && a.D2 % 2 == 0 && nh2 <= 16;
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
  [[maybe_unused]] KeySegs segs;
  if (pairs) {
    segs.p[0] = reinterpret_cast<const uint16_t*>(row_ptr(a.k1, a.kv_dtype, b, 0, 0));
    segs.stride[0] = a.k1.sr, segs.n[0] = a.D1, segs.qoff[0] = 0;
    for (int64_t h2 = 0; h2 < nh2; ++h2) {
      segs.p[1 + h2] = reinterpret_cast<const uint16_t*>(row_ptr(a.k2, a.kv_dtype, b, h2, 0));
      segs.stride[1 + h2] = a.k2.sr, segs.n[1 + h2] = a.D2, segs.qoff[1 + h2] = a.D1 + h2 * a.D2;
    }
    segs.count = static_cast<int>(1 + nh2);
  }
  for (int64_t j0 = lo; j0 < hi; j0 += kLaneBlock) {
    const int64_t nb = imin(kLaneBlock, hi - j0), nb8 = round_up(nb, 8);
    // Gather the block's key rows [c | k_r of each RoPE head].
    for (int64_t j = 0; j < nb && !pairs; ++j) {
      // f32 pieces are written in increasing offset, each over the last one's padding.
      float* kr = Kb + j * ks;
      if (a.kq) dequant_row(kr, *a.kq, a.kv_dtype, b, 0, j0 + j, a.D1, kgroup);
      else row_to_f32(kr, row_ptr(a.k1, a.kv_dtype, b, 0, j0 + j), a.kv_dtype, a.D1);
      for (int64_t h2 = 0; h2 < nh2; ++h2) {
        float* dst = kr + a.D1 + h2 * a.D2;
        if (a.k2q) dequant_row(dst, *a.k2q, a.kv_dtype, b, h2, j0 + j, a.D2, k2group);
        else row_to_f32(dst, row_ptr(a.k2, a.kv_dtype, b, h2, j0 + j), a.kv_dtype, a.D2);
      }
    }
    // Rows nb..nb8 hold the zeros of the first memset or keys of an earlier block: finite, and masked below.
    if (pairs) {
      if constexpr (kBf16) {
        int64_t j = 0;
        for (; j + 8 <= nb; j += 8) lane_scores_bf16_rows<8>(Qp, segs, j0 + j, St + j * 16, _mm512_set1_ps(c));
        for (; j < nb; ++j) lane_scores_bf16_rows<1>(Qp, segs, j0 + j, St + j * 16, _mm512_set1_ps(c));
      }
    } else {
      for (int64_t j = 0; j < nb8; j += 8) lane_scores<8>(Qt, Dt, Kb + j * ks, ks, St + j * 16);
    }
    const __m512 al = lanes_block_softmax(a, valid, j0, nb, nb8, pmin, pmax, posv, St, m, l);
    for (int64_t d = 0; d < Dv; ++d) _mm512_store_ps(acc + d * 16, _mm512_mul_ps(al, _mm512_load_ps(acc + d * 16)));
    int64_t d0 = 0;
    if (pairs) {
      if constexpr (kBf16) {
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
      }
      continue;
    }
    for (; d0 + 16 <= Dv; d0 += 16) lane_pv<16>(St, nb8, Kb, ks, d0, acc);
    for (; d0 + 8 <= Dv; d0 += 8) lane_pv<8>(St, nb8, Kb, ks, d0, acc);
    for (; d0 < Dv; ++d0) lane_pv<1>(St, nb8, Kb, ks, d0, acc);
  }
  store_lane_partial(m, l, acc, R, Dv, out);
}

}  // namespace
}  // namespace mha2mla::kernels
