// AVX2 attention for CPUs without AVX-512 (f32 arithmetic for f32/bf16/f16 storage). Compiled with
// -mavx2 -mfma -mf16c; called only when cpu_has_avx2().
//
// Decode over a split [s0, s1) of the keys for the R = g·T query rows of one work item, in one of two shapes:
//   narrow (R < 6: MHA, small GQA groups), 8 keys per block: each key row is converted to f32 once per block
//     (bf16/f16, or dequantized from 2/4/8-bit codes; f32 rows of a multiple of 8 are read in place) and shared
//     by every query row; scores come from one reduce8 per row and block;
//   wide (R >= 6: absorbed MLA, GQA groups of 6 and more), 32 keys per block: the block is converted and
//     transposed once, so scores and the weighted sum are two small register-tiled matrix products with no
//     horizontal sums (see wide_rows).
// Prefill runs the wide path over g heads x a tile of query tokens (prefill_tile). Both keep an online softmax
// per row in the log2 domain. How a block's rows are read (plain or quantized) is in attention_avx2_rows.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/attention_avx2_rows.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kWideMinRows = 6;  // rows per work item from which the wide path's transposes pay for themselves

// s[j] += q · k[j] for the 8 keys of a block, over n (a multiple of 8) values.
inline void block_dots(const float* q, const BlockRows& k, int64_t n, __m256* acc) {
  for (int64_t d = 0; d < n; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < kBlk; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.row[j] + d), acc[j]);
  }
}

// The query rows of one work item, shared by both block shapes: rows in f32, in the log2 domain with the scale
// folded in and zero-padded (row r = head h0 + r / nt, token t0 + r % nt), zeroed accumulators, and each row's
// visible keys clipped to [s0, s1).
struct RowSet {
  int64_t R, D1p, D2p, Dvp;
  float *Q1, *Q2, *Acc;  // [R][D1p], [R][D2p], [R][Dvp]
  std::vector<int64_t> lo, hi;
  std::vector<float> M, L;
};

void load_rows(const AttnArgs& a, int64_t b, int64_t h0, int64_t t0, int64_t nt, int64_t s0, int64_t s1, RowSet& rs) {
  const float c = a.scale * kLog2e;
  rs.lo.assign(rs.R, 0);
  rs.hi.assign(rs.R, 0);
  rs.M.assign(rs.R, kNegInf);
  rs.L.assign(rs.R, 0.f);
  for (int64_t r = 0; r < rs.R; ++r) {
    const int64_t h = h0 + r / nt, t = t0 + r % nt;
    row_to_f32(row_ptr(a.q1, a.dtype, b, h, t), a.dtype, a.D1, rs.Q1 + r * rs.D1p);
    for (int64_t d = 0; d < rs.D1p; ++d) rs.Q1[r * rs.D1p + d] *= c;
    if (a.D2) {
      row_to_f32(row_ptr(a.q2, a.dtype, b, h, t), a.dtype, a.D2, rs.Q2 + r * rs.D2p);
      for (int64_t d = 0; d < rs.D2p; ++d) rs.Q2[r * rs.D2p + d] *= c;
    }
    for (int64_t d = 0; d < rs.Dvp; ++d) rs.Acc[r * rs.Dvp + d] = 0.f;
    visible_range(a, a.start + t, &rs.lo[r], &rs.hi[r]);
    if (rs.lo[r] < s0) rs.lo[r] = s0;
    if (rs.hi[r] > s1) rs.hi[r] = s1;
  }
}

// Keys [j0, j0 + 8·n) the batch row holds (valid), as n lane masks.
inline void key_masks(const AttnArgs& a, int64_t b, int64_t j0, int64_t nb, int n, __m256* ok) {
  for (int v = 0; v < n; ++v) {
    if (!a.valid) {
      ok[v] = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      continue;
    }
    alignas(32) int32_t m[8];
    for (int64_t j = 0; j < 8; ++j) {
      const int64_t k = 8 * v + j;
      m[j] = k < nb && a.valid[b * a.S + j0 + k] ? -1 : 0;
    }
    ok[v] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(m)));
  }
}

// Visible lanes of the 8 keys from slot idx[0]: in [l, h) and valid.
inline __m256 visible(__m256 idx, int64_t l, int64_t h, __m256 ok) {
  // Slots are exact in f32 up to 2^24, far beyond any cache.
  return _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(idx, _mm256_set1_ps(static_cast<float>(l)), _CMP_GE_OQ),
                                     _mm256_cmp_ps(idx, _mm256_set1_ps(static_cast<float>(h)), _CMP_LT_OQ)),
                       ok);
}

void write_partial(const AttnArgs& a, const RowSet& rs, const Partial& out) {
  for (int64_t r = 0; r < rs.R; ++r) {
    out.m[r] = rs.M[r];
    out.l[r] = rs.L[r];
    for (int64_t d = 0; d < a.Dv; ++d) out.acc[r * a.Dv + d] = rs.Acc[r * rs.Dvp + d];
  }
}

// The geometry of one work item (the g heads of group grp, nt tokens each): its query rows, the padded widths
// and the KV heads its rows read.
struct Item {
  int64_t g, R, h0, per_kv, D1p, D2p, Dvp;
  int64_t kv0, nkv;  // KV heads of the rows (k2)
  int64_t wmax;      // widest padded row
  bool v_is_k;
  Source k1, v, k2;
  Item(const AttnArgs& a, int64_t grp, int64_t nt)  // nt tokens per head
      : g(a.Hq / a.groups), R(g * nt), h0(grp * g), per_kv(a.Hq / a.Hkv), D1p(round_up8(a.D1)),
        D2p(round_up8(a.D2)), Dvp(round_up8(a.Dv)), kv0(h0 / per_kv), nkv((h0 + g - 1) / per_kv - kv0 + 1),
        wmax(std::max({D1p, D2p, Dvp})), v_is_k(values_are_keys(a)), k1(&a.k1, a.kq), v(&a.v, a.vq),
        k2(&a.k2, a.k2q) {}
};

// --- few query rows per work item (MHA, small GQA groups): one dot product per row and key ----------------------

void decode_split_narrow(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  const Item it(a, grp, a.T);
  const int64_t R = it.R, h0 = it.h0, per_kv = it.per_kv, D1p = it.D1p, D2p = it.D2p, Dvp = it.Dvp, kv0 = it.kv0;
  // Scratch: Q1 [R][D1p], Q2 [R][D2p], Acc [R][Dvp], K1/V blocks [8][D1p|Dvp], K2 blocks [nkv][8][D2p], zeros,
  // Lsum [R][8] (per-lane sums).
  thread_local std::vector<float> scratch;
  const size_t need = R * (D1p + D2p + Dvp + 8) + kBlk * (D1p + Dvp) + it.nkv * kBlk * D2p + it.wmax;
  if (scratch.size() < need) scratch.assign(need, 0.f);
  RowSet rs{R, D1p, D2p, Dvp, scratch.data(), nullptr, nullptr, {}, {}, {}, {}};
  rs.Q2 = rs.Q1 + R * D1p;
  rs.Acc = rs.Q2 + R * D2p;
  float* K1b = rs.Acc + R * Dvp;
  float* Vb = K1b + kBlk * D1p;
  float* K2b = Vb + kBlk * Dvp;
  float* zeros = K2b + it.nkv * kBlk * D2p;
  float* Lsum = zeros + it.wmax;
  for (int64_t i = 0; i < it.wmax; ++i) zeros[i] = 0.f;
  for (int64_t i = 0; i < R * 8; ++i) Lsum[i] = 0.f;
  load_rows(a, b, h0, 0, a.T, s0, s1, rs);
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  BlockRows K1, V;
  std::vector<BlockRows> k2(a.D2 ? it.nkv : 0);
  for (int64_t j0 = s0; j0 < s1; j0 += kBlk) {
    const int64_t nb = s1 - j0 < kBlk ? s1 - j0 : kBlk;
    __m256 key_ok;
    key_masks(a, b, j0, nb, 1, &key_ok);
    block_rows(it.k1, a.kv_dtype, b, kv0, j0, nb, a.D1, K1b, zeros, &K1);
    if (it.v_is_k) V = K1;
    else block_rows(it.v, a.kv_dtype, b, kv0, j0, nb, a.Dv, Vb, zeros, &V);
    for (int64_t i = 0; i < static_cast<int64_t>(k2.size()); ++i)
      block_rows(it.k2, a.kv_dtype, b, kv0 + i, j0, nb, a.D2, K2b + i * kBlk * D2p, zeros, &k2[i]);
    const __m256 idx = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(j0)), iota);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t l = rs.lo[r], hh = rs.hi[r] < j0 + nb ? rs.hi[r] : j0 + nb;
      if (l >= hh || j0 >= hh) continue;  // the row sees no key of this block
      __m256 acc[kBlk];
      for (auto& x : acc) x = _mm256_setzero_ps();
      block_dots(rs.Q1 + r * D1p, K1, D1p, acc);
      if (a.D2) block_dots(rs.Q2 + r * D2p, k2[(h0 + r / a.T) / per_kv - kv0], D2p, acc);
      __m256 s = reduce8(acc);
      if (a.valid || l > j0 || hh < j0 + kBlk)  // else every key of the block is visible: no mask to apply
        s = _mm256_blendv_ps(_mm256_set1_ps(kNegInf), s, visible(idx, l, hh, key_ok));
      // The running maximum moves only when a score exceeds it; then (and only then) what the row has summed
      // so far is rescaled, so most blocks need neither a horizontal max nor a rescale.
      float* acc_r = rs.Acc + r * Dvp;
      if (_mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_set1_ps(rs.M[r]), _CMP_GT_OQ))) {
        const float mb = hmax8(s);
        if (rs.M[r] != kNegInf) {
          const __m256 av = _mm256_set1_ps(std::exp2(rs.M[r] - mb));
          for (int64_t d = 0; d < Dvp; d += 8) _mm256_storeu_ps(acc_r + d, _mm256_mul_ps(_mm256_loadu_ps(acc_r + d), av));
          _mm256_storeu_ps(Lsum + r * 8, _mm256_mul_ps(_mm256_loadu_ps(Lsum + r * 8), av));
        }
        rs.M[r] = mb;
      } else if (rs.M[r] == kNegInf) {
        continue;  // no visible key yet
      }
      const __m256 p = exp2_nonpos_ps(_mm256_sub_ps(s, _mm256_set1_ps(rs.M[r])));
      _mm256_storeu_ps(Lsum + r * 8, _mm256_add_ps(_mm256_loadu_ps(Lsum + r * 8), p));
      alignas(32) float pj[kBlk];
      _mm256_store_ps(pj, p);
      for (int64_t d = 0; d < Dvp; d += 8) {
        __m256 o = _mm256_loadu_ps(acc_r + d);
        for (int j = 0; j < kBlk; ++j) o = _mm256_fmadd_ps(_mm256_set1_ps(pj[j]), _mm256_loadu_ps(V.row[j] + d), o);
        _mm256_storeu_ps(acc_r + d, o);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) rs.L[r] = hsum8(_mm256_loadu_ps(Lsum + r * 8));
  write_partial(a, rs, out);
}

// --- many query rows per work item (absorbed MLA, large GQA groups): two small matrix products per block ----------
//
// A block of 32 keys is transposed once (keys as SIMD lanes), so that scores come out as 4 vectors per row
// without horizontal sums: S = Q·Kᵀ broadcasts one query value per FMA over 8 keys. The online softmax then
// runs per row on those vectors, rescaling only when a row's maximum grows, and Acc += P·V broadcasts one
// probability per FMA over 8 value channels. Both products keep their tiles in registers.

// S[r][0, 32) = Q1[r] · K1T + Q2[r] · K2T for RC rows, over n1 and n2 values (KT is [n][32]; n2 = 0 without
// RoPE keys): one accumulator per row and 8 keys, so a tile of 3 rows keeps 12 independent chains in flight,
// and both terms go into the same registers.
template <int RC>
inline void score_tile(const float* Q1, int64_t ld1, const float* K1T, int64_t n1, const float* Q2, int64_t ld2,
                       const float* K2T, int64_t n2, float* S) {
  __m256 acc[RC][4];
  for (int r = 0; r < RC; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int part = 0; part < 2; ++part) {
    const float* Q = part ? Q2 : Q1;
    const float* KT = part ? K2T : K1T;
    const int64_t ldq = part ? ld2 : ld1, n = part ? n2 : n1;
    for (int64_t d = 0; d < n; ++d) {
      __m256 q[RC];
      for (int r = 0; r < RC; ++r) q[r] = _mm256_broadcast_ss(Q + r * ldq + d);
      for (int v = 0; v < 4; ++v) {
        const __m256 k = _mm256_loadu_ps(KT + d * kWide + 8 * v);
        for (int r = 0; r < RC; ++r) acc[r][v] = _mm256_fmadd_ps(q[r], k, acc[r][v]);
      }
    }
  }
  for (int r = 0; r < RC; ++r)
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(S + r * kWide + 8 * v, acc[r][v]);
}

// Scores of rows [r0, r1), all of them reading the RoPE key head K2T (n2 = 0 without RoPE keys), three rows
// per tile.
inline void score_rows(const RowSet& rs, int64_t r0, int64_t r1, const float* K1T, int64_t n1, const float* K2T,
                       int64_t n2, float* S) {
  const int64_t l1 = rs.D1p, l2 = rs.D2p;
  int64_t r = r0;
  for (; r + 3 <= r1; r += 3)
    score_tile<3>(rs.Q1 + r * l1, l1, K1T, n1, rs.Q2 + r * l2, l2, K2T, n2, S + r * kWide);
  if (r1 - r == 2) score_tile<2>(rs.Q1 + r * l1, l1, K1T, n1, rs.Q2 + r * l2, l2, K2T, n2, S + r * kWide);
  else if (r1 - r == 1) score_tile<1>(rs.Q1 + r * l1, l1, K1T, n1, rs.Q2 + r * l2, l2, K2T, n2, S + r * kWide);
}

// Acc[r][d0, d0 + 8·NC) += Σ_j P[r][j] · V[j][d0, ...) for RC rows and the block's first nb keys.
template <int RC, int NC>
inline void pv_tile(const float* P, const WideRows& V, int64_t nb, int64_t d0, float* Acc, int64_t lda) {
  __m256 o[RC][NC];
  for (int r = 0; r < RC; ++r)
    for (int c = 0; c < NC; ++c) o[r][c] = _mm256_loadu_ps(Acc + r * lda + d0 + 8 * c);
  for (int64_t j = 0; j < nb; ++j) {
    __m256 v[NC];
    for (int c = 0; c < NC; ++c) v[c] = _mm256_loadu_ps(V.row[j] + d0 + 8 * c);
    for (int r = 0; r < RC; ++r) {
      const __m256 p = _mm256_broadcast_ss(P + r * kWide + j);
      for (int c = 0; c < NC; ++c) o[r][c] = _mm256_fmadd_ps(p, v[c], o[r][c]);
    }
  }
  for (int r = 0; r < RC; ++r)
    for (int c = 0; c < NC; ++c) _mm256_storeu_ps(Acc + r * lda + d0 + 8 * c, o[r][c]);
}

template <int RC>
inline void pv_rows(const float* P, const WideRows& V, int64_t nb, int64_t Dvp, float* Acc) {
  int64_t d = 0;
  for (; d + 24 <= Dvp; d += 24) pv_tile<RC, 3>(P, V, nb, d, Acc, Dvp);
  if (Dvp - d == 16) pv_tile<RC, 2>(P, V, nb, d, Acc, Dvp);
  else if (Dvp - d == 8) pv_tile<RC, 1>(P, V, nb, d, Acc, Dvp);
}

// The same product from the transposed block, for a 4-bit latent (MLA: V is K1, whose codes q4_block_T turns
// straight into KT, with no rows): AccT[r][d] holds 8 lanes of partial sums over the keys, summed once at the
// end. RC rows by 4 channels per tile; P is zero for keys a row does not see. With bf16 or f32 rows at hand
// the row form (pv_tile) is faster: it moves fewer accumulators through memory.
template <int RC>
inline void pvT_tile(const float* P, const float* VT, int64_t d0, float* AccT, int64_t ldr) {
  __m256 o[RC][4];
  for (int r = 0; r < RC; ++r)
    for (int c = 0; c < 4; ++c) o[r][c] = _mm256_loadu_ps(AccT + r * ldr + (d0 + c) * 8);
  for (int v = 0; v < 4; ++v) {
    __m256 p[RC];
    for (int r = 0; r < RC; ++r) p[r] = _mm256_loadu_ps(P + r * kWide + 8 * v);
    for (int c = 0; c < 4; ++c) {
      const __m256 k = _mm256_loadu_ps(VT + (d0 + c) * kWide + 8 * v);
      for (int r = 0; r < RC; ++r) o[r][c] = _mm256_fmadd_ps(p[r], k, o[r][c]);
    }
  }
  for (int r = 0; r < RC; ++r)
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(AccT + r * ldr + (d0 + c) * 8, o[r][c]);
}

template <int RC>
inline void pvT_rows(const float* P, const float* VT, int64_t Dvp, float* AccT) {
  for (int64_t d = 0; d < Dvp; d += 4) pvT_tile<RC>(P, VT, d, AccT, Dvp * 8);
}

// Latent widths up to which a 4-bit latent's P·V reads the transposed block (pvT_tile): AccT is 8 times Acc,
// so wider latents keep the row form.
constexpr int64_t kPvTMaxWidth = 64;

// The wide path over keys [s0, s1) for the rows of `it`, tokens t0 .. t0 + nt - 1 of each head: returns the
// rows' running max, sum and accumulator (pointing into this thread's scratch, valid until the next call).
RowSet wide_rows(const AttnArgs& a, const Item& it, int64_t b, int64_t t0, int64_t nt, int64_t s0, int64_t s1) {
  const int64_t R = it.R, h0 = it.h0, per_kv = it.per_kv, D1p = it.D1p, D2p = it.D2p, Dvp = it.Dvp, kv0 = it.kv0;
  const int64_t nk2 = a.D2 ? it.nkv : 0;
  const bool pv_T = it.v_is_k && Dvp <= kPvTMaxWidth && a.kq && a.kq->bits == 4;
  // Scratch: Q1, Q2, Acc as in RowSet; Lsum [R][8] (per-lane sums); S/P [R][32]; K1/V rows [32][D1p|Dvp];
  // K2 rows [32][D2p] (one RoPE key head at a time); K1T [D1p][32]; K2T [nk2][D2p][32]; zeros [wmax];
  // AccT [R][Dvp][8] when P·V reads the transposed block.
  thread_local std::vector<float> scratch;
  const size_t need = R * (D1p + D2p + Dvp + 8 + kWide) + kWide * (D1p + Dvp + D2p) + nk2 * kWide * D2p +
                      D1p * kWide + it.wmax + (pv_T ? R * Dvp * 8 : 0);
  if (scratch.size() < need) scratch.assign(need, 0.f);
  RowSet rs{R, D1p, D2p, Dvp, scratch.data(), nullptr, nullptr, {}, {}, {}, {}};
  rs.Q2 = rs.Q1 + R * D1p;
  rs.Acc = rs.Q2 + R * D2p;
  float* Lsum = rs.Acc + R * Dvp;
  float* S = Lsum + R * 8;
  float* K1b = S + R * kWide;
  float* Vb = K1b + kWide * D1p;
  float* K2b = Vb + kWide * Dvp;
  float* K1T = K2b + kWide * D2p;
  float* K2T = K1T + D1p * kWide;
  float* zeros = K2T + nk2 * D2p * kWide;
  float* AccT = zeros + it.wmax;
  for (int64_t i = 0; i < it.wmax; ++i) zeros[i] = 0.f;
  for (int64_t i = 0; i < R * 8; ++i) Lsum[i] = 0.f;
  if (pv_T) std::fill(AccT, AccT + R * Dvp * 8, 0.f);
  load_rows(a, b, h0, t0, nt, s0, s1, rs);
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  WideRows K1, V, K2;
  for (int64_t j0 = s0; j0 < s1; j0 += kWide) {
    const int64_t nb = s1 - j0 < kWide ? s1 - j0 : kWide;
    __m256 key_ok[4];
    key_masks(a, b, j0, nb, 4, key_ok);
    // Keys (and the latent values) as f32: in one pass where rows split into 8-value chunks, else row by row.
    if (chunked(it.k1, a.D1)) {
      load_block_T(it.k1, a.kv_dtype, b, kv0, j0, nb, a.D1, zeros, K1T, K1b, it.v_is_k && !pv_T ? &K1 : nullptr);
    } else {
      block_rows(it.k1, a.kv_dtype, b, kv0, j0, nb, a.D1, K1b, zeros, &K1);
      transpose_block(K1, D1p, K1T);
    }
    if (it.v_is_k) V = K1;
    else block_rows(it.v, a.kv_dtype, b, kv0, j0, nb, a.Dv, Vb, zeros, &V);
    // S = Q1·K1ᵀ + Q2·K2ᵀ, the second term over the rows of each RoPE key head.
    for (int64_t i = 0; i < nk2; ++i) {
      float* kt = K2T + i * D2p * kWide;
      if (chunked(it.k2, a.D2)) {
        load_block_T(it.k2, a.kv_dtype, b, kv0 + i, j0, nb, a.D2, zeros, kt, nullptr, nullptr);
      } else {
        block_rows(it.k2, a.kv_dtype, b, kv0 + i, j0, nb, a.D2, K2b, zeros, &K2);
        transpose_block(K2, D2p, kt);
      }
      const int64_t r0 = std::max<int64_t>(0, ((kv0 + i) * per_kv - h0) * nt);
      const int64_t r1 = std::min<int64_t>(R, ((kv0 + i + 1) * per_kv - h0) * nt);
      score_rows(rs, r0, r1, K1T, D1p, kt, D2p, S);
    }
    if (!nk2) score_rows(rs, 0, R, K1T, D1p, nullptr, 0, S);
    // Online softmax per row; P overwrites S.
    for (int64_t r = 0; r < R; ++r) {
      float* Pr = S + r * kWide;
      const int64_t l = rs.lo[r], hh = rs.hi[r] < j0 + nb ? rs.hi[r] : j0 + nb;
      const bool all_visible = !a.valid && l <= j0 && hh >= j0 + kWide;  // the usual case: no mask to apply
      __m256 s[4];
      __m256 mx = _mm256_set1_ps(kNegInf);
      for (int v = 0; v < 4; ++v) {
        s[v] = _mm256_loadu_ps(Pr + 8 * v);
        if (!all_visible) {
          const __m256 idx = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(j0 + 8 * v)), iota);
          s[v] = _mm256_blendv_ps(_mm256_set1_ps(kNegInf), s[v], visible(idx, l, hh, key_ok[v]));
        }
        mx = _mm256_max_ps(mx, s[v]);
      }
      const float mb = hmax8(mx);
      if (mb == kNegInf) {  // the row sees no key of this block
        for (int v = 0; v < 4; ++v) _mm256_storeu_ps(Pr + 8 * v, _mm256_setzero_ps());
        continue;
      }
      if (mb > rs.M[r]) {  // a new maximum: rescale what the row has summed so far
        if (rs.M[r] != kNegInf) {
          const __m256 av = _mm256_set1_ps(std::exp2(rs.M[r] - mb));
          float* acc_r = pv_T ? AccT + r * Dvp * 8 : rs.Acc + r * Dvp;
          const int64_t width = pv_T ? Dvp * 8 : Dvp;
          for (int64_t d = 0; d < width; d += 8) _mm256_storeu_ps(acc_r + d, _mm256_mul_ps(_mm256_loadu_ps(acc_r + d), av));
          _mm256_storeu_ps(Lsum + r * 8, _mm256_mul_ps(_mm256_loadu_ps(Lsum + r * 8), av));
        }
        rs.M[r] = mb;
      }
      const __m256 m = _mm256_set1_ps(rs.M[r]);
      __m256 lsum = _mm256_loadu_ps(Lsum + r * 8);
      for (int v = 0; v < 4; ++v) {
        const __m256 p = exp2_nonpos_ps(_mm256_sub_ps(s[v], m));
        _mm256_storeu_ps(Pr + 8 * v, p);
        lsum = _mm256_add_ps(lsum, p);
      }
      _mm256_storeu_ps(Lsum + r * 8, lsum);
    }
    // Acc += P·V, three rows per tile.
    int64_t r = 0;
    if (pv_T) {
      for (; r + 3 <= R; r += 3) pvT_rows<3>(S + r * kWide, K1T, Dvp, AccT + r * Dvp * 8);
      if (R - r == 2) pvT_rows<2>(S + r * kWide, K1T, Dvp, AccT + r * Dvp * 8);
      else if (R - r == 1) pvT_rows<1>(S + r * kWide, K1T, Dvp, AccT + r * Dvp * 8);
      continue;
    }
    for (; r + 3 <= R; r += 3) pv_rows<3>(S + r * kWide, V, nb, Dvp, rs.Acc + r * Dvp);
    if (R - r == 2) pv_rows<2>(S + r * kWide, V, nb, Dvp, rs.Acc + r * Dvp);
    else if (R - r == 1) pv_rows<1>(S + r * kWide, V, nb, Dvp, rs.Acc + r * Dvp);
  }
  for (int64_t r = 0; r < R; ++r) rs.L[r] = hsum8(_mm256_loadu_ps(Lsum + r * 8));
  if (pv_T)
    for (int64_t i = 0; i < R * Dvp; ++i) rs.Acc[i] = hsum8(_mm256_loadu_ps(AccT + i * 8));
  return rs;
}

void decode_split_wide(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  write_partial(a, wide_rows(a, Item(a, grp, a.T), b, 0, a.T, s0, s1), out);
}

// Prefill: query tokens [t0, t0 + tq) of the g heads of KV head kvh over every key they see (the wide path with
// g·tq rows), normalised and written to out.
void prefill_tile(const AttnArgs& a, int64_t b, int64_t kvh, int64_t t0, int64_t tq) {
  const Item it(a, kvh, tq);
  int64_t s0 = a.S, s1 = 0;
  for (int64_t t = t0; t < t0 + tq; ++t) {
    int64_t lo, hi;
    visible_range(a, a.start + t, &lo, &hi);
    s0 = std::min(s0, lo), s1 = std::max(s1, hi);
  }
  if (s1 < s0) s1 = s0;
  const RowSet rs = wide_rows(a, it, b, t0, tq, s0, s1);
  for (int64_t r = 0; r < it.R; ++r) {
    const int64_t h = it.h0 + r / tq, t = t0 + r % tq;
    const float inv = rs.L[r] > 0.f ? 1.f / rs.L[r] : 0.f;  // a row that sees no key gets zeros
    void* o = static_cast<char*>(a.out) + ((b * a.Hq + h) * a.T + t) * a.Dv * elem_size(a.dtype);
    for (int64_t d = 0; d < a.Dv; ++d) store_elem(o, d, a.dtype, rs.Acc[r * it.Dvp + d] * inv);
  }
}

void decode_split(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  if (a.Hq / a.groups * a.T >= kWideMinRows) decode_split_wide(a, b, grp, s0, s1, out);
  else decode_split_narrow(a, b, grp, s0, s1, out);
}

}  // namespace

const AttnKernels kAttn{prefill_tile, decode_split};

}  // namespace mha2mla::kernels::avx2
