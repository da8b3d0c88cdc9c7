#pragma once
// The building blocks the AVX-512 attention algorithms share: masking, the P·V tiles, dot products of one row
// against a block of keys, a row's online softmax over a block, and the 4-bit code tables. Part of the AVX-512
// attention kernels (attention_avx512_impl.h lists them); internal linkage, compiled with -mavx512* only.
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

struct PVF32 {
  const float* St; int64_t Rp, r0, nb; const float* const* vrow; float* acc; int64_t Dvp;
  template <int RB, int NC>
  void operator()(int64_t dv0, __mmask16 last) const { pv_f32<RB, NC>(St, Rp, r0, nb, vrow, dv0, last, acc, Dvp); }
};

struct PVBf16 {
  const uint32_t* Pp; int64_t Rp, r0, npairs; const uint32_t* Vp; int64_t Dvp; float* acc;
  template <int RB, int NC>
  void operator()(int64_t dv0, __mmask16) const { pv_bf16<RB, NC>(Pp, Rp, r0, npairs, Vp, Dvp, dv0, acc); }
};

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

// Keys per block of the split decode kernels.
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

// dot16 on bf16 rows as stored: pairs multiply exactly and accumulate in f32 (vdpbf16ps), with no conversion.
inline void dot16_bf16(const uint16_t* q, const uint16_t* const* k, int64_t D, __m512* acc) {
  for (int64_t d = 0; d < D; d += 32) {
    const __m512i qv = _mm512_loadu_si512(q + d);
    for (int j = 0; j < 16; ++j)
      acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(k[j] + d), (__m512bh)qv);
  }
}

// 4-bit codes as bf16: exact (0..15), turned into bf16 pairs through tables; shared by the in-place 4-bit paths
// of the MLA lanes (attention_avx512_mla_lanes.h) and of the split decode (attention_avx512_split_bf16.h).
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

// Byte code -> its bf16 value, exactly, for the two formats with one code per byte: 8-bit unsigned (0..255) and
// E4M3 (bf16 holds every E4M3 value: 8 exponent bits to 4, 7 mantissa bits to 3).
struct ByteCodeTables {
  uint16_t u8[256], e4m3[256];
  ByteCodeTables() {
    for (int c = 0; c < 256; ++c) {
      u8[c] = f32_to_bf16(static_cast<float>(c));
      e4m3[c] = f32_to_bf16(e4m3_to_f32(static_cast<uint8_t>(c)));
    }
  }
};
inline const ByteCodeTables& byte_code_tables() {
  static const ByteCodeTables t;
  return t;
}

// The codes the vdpbf16ps in-place paths read, each exact in bf16: 4-bit and 8-bit unsigned codes (f16 scale and
// zero point per group) and E4M3 (f32 scale, no zero point).
enum class PairCodes { Uint4, Uint8, E4M3 };
constexpr bool has_zero(PairCodes p) { return p != PairCodes::E4M3; }
constexpr int64_t bytes_per_pair(PairCodes p) { return p == PairCodes::Uint4 ? 1 : 2; }
// A buffer's codes as PairCodes, or -1 (2-bit codes).
inline int pair_codes(const QuantDesc& q) {
  if (q.codes == Codes::E4M3) return static_cast<int>(PairCodes::E4M3);
  if (q.bits == 4) return static_cast<int>(PairCodes::Uint4);
  if (q.bits == 8) return static_cast<int>(PairCodes::Uint8);
  return -1;
}
// The bf16 value of each byte code, for the two formats with one code per byte.
template <PairCodes P>
inline const uint16_t* byte_code_table() {
  static_assert(P != PairCodes::Uint4, "4-bit codes pack two per byte");
  if constexpr (P == PairCodes::E4M3) return byte_code_tables().e4m3;
  else return byte_code_tables().u8;
}

// 16 byte codes (the first n valid, the rest 0) as their f32 values, exactly.
template <PairCodes P>
inline __m512 byte_codes16(const uint8_t* p, int64_t n) {
  static_assert(P != PairCodes::Uint4, "4-bit codes pack two per byte");
  if constexpr (P == PairCodes::E4M3) return _mm512_mul_ps(e4m3x16_over256(p, n), _mm512_set1_ps(256.f));
  else return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(tail_mask(n), p)));
}

// One f16 scale or zero point: vcvtph2ps (F16C), not the portable bit-twiddling of scalar_convert.h.
inline float half_to_f32(uint16_t h) { return _cvtsh_ss(h); }

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

// V2[d] = bf16 pair (x(rowa[d]), x(rowb[d])) of two rows of byte codes (8-bit or E4M3; a missing second row: 0),
// exact.
template <PairCodes P>
inline void byte_rows_to_pairs(const uint8_t* rowa, const uint8_t* rowb, int64_t L, uint32_t* v2) {
  for (int64_t d = 0; d < L; d += 16) {
    const int64_t n = imin(16, L - d);
    const __m512 fa = byte_codes16<P>(rowa + d, n);
    const __m512 fb = rowb ? byte_codes16<P>(rowb + d, n) : _mm512_setzero_ps();
    _mm512_mask_storeu_epi32(v2 + d, tail_mask(n), interleave_bf16((__m512i)_mm512_cvtne2ps_pbh(fb, fa)));
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

}  // namespace
}  // namespace mha2mla::kernels
