#pragma once
// Key and value rows of a block of cached tokens as f32, for the AVX2 attention (attention_avx2.cpp): from
// f32/bf16/f16 storage or from 2/4/8-bit codes with their f16 scales and zeros (layout in quant_attention.h),
// dequantized in registers; as row pointers (the narrow path) or transposed, keys as SIMD lanes (the wide path).
// Internal linkage, compiled with -mavx2 -mfma -mf16c (see simd_avx2.h): include from *_avx2.cpp files alone.
#include <cstdint>
#include <cstring>

#include "kernels/attention_args.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

constexpr int64_t kBlk = 8;    // keys per block of the narrow path: one score vector per row
constexpr int64_t kWide = 32;  // keys per block of the wide path: 4 score vectors per row

// Spreads 8 codes of `bits` bits (`bits` bytes) to 32-bit lanes as f32: 8-bit codes widen byte to lane; 4- and
// 2-bit ones are broadcast whole to every lane, and lane k shifts its own code down (k·bits) and masks it.
struct CodeUnpack {
  __m256i shift, mask;
  int bits = 8;
  explicit CodeUnpack(int b) : bits(b) {
    shift = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(b));
    mask = _mm256_set1_epi32((1 << b) - 1);
  }
  __m256 codes8(const uint8_t* p) const {  // reads exactly `bits` bytes: a row's last codes may end its buffer
    if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    uint32_t raw = 0;
    if (bits == 4) {
      std::memcpy(&raw, p, 4);
    } else {
      uint16_t r2;
      std::memcpy(&r2, p, 2);
      raw = r2;
    }
    const __m256i v = _mm256_set1_epi32(static_cast<int>(raw));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, shift), mask));
  }
};

// Values [0, n8) of one row quantized per token (n8 and group multiples of 8) as f32: code * scale + zero, the
// row's scale and zero loaded once per group of channels.
inline void token_row_to_f32(const uint8_t* codes, const uint16_t* sc, const uint16_t* zp, int64_t group, int bits,
                             const CodeUnpack& u, int64_t n8, float* dst) {
  __m256 scv = _mm256_setzero_ps(), zv = scv;
  for (int64_t d = 0, gi = 0, next = 0; d < n8; d += 8) {
    if (d == next) {  // the first chunk of group gi
      scv = _mm256_set1_ps(_cvtsh_ss(sc[gi])), zv = _mm256_set1_ps(_cvtsh_ss(zp[gi]));
      ++gi, next += group;
    }
    _mm256_storeu_ps(dst + d, _mm256_fmadd_ps(u.codes8(codes + d * bits / 8), scv, zv));
  }
}

// 8 E4M3 codes as f32 divided by 256: each byte's magnitude bits become an f16's exponent and mantissa (the
// formats differ in exponent width and bias, a factor 2^8 here), so vcvtph2ps converts subnormal codes exactly.
// The caller multiplies the scale by 256, which keeps every product exact.
inline __m256 e4m3x8_over256(const uint8_t* p) {
  const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                 _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7));
  return _mm256_cvtph_ps(h);
}

// Values [0, n8) of an E4M3 row (n8 a multiple of 8) as e4m3(code) * scale where whole 8-value chunks share
// what they need: per channel always, per token when the group is a multiple of 8. Returns the values done.
inline int64_t e4m3_row_to_f32(const QuantDesc& q, const uint8_t* row, int64_t b, int64_t h, int64_t s, int64_t n8,
                               float* dst) {
  const float* sc = q.scale32 + b * q.s_sb + h * q.s_sh;
  const __m256 k256 = _mm256_set1_ps(256.f);
  if (q.per_channel) {
    sc += (s / q.group) * q.s_sr;
    for (int64_t d = 0; d < n8; d += 8)
      _mm256_storeu_ps(dst + d, _mm256_mul_ps(e4m3x8_over256(row + d), _mm256_mul_ps(_mm256_loadu_ps(sc + d), k256)));
    return n8;
  }
  if (q.group % 8) return 0;
  sc += s * q.s_sr;
  for (int64_t d = 0; d < n8; d += 8)
    _mm256_storeu_ps(dst + d, _mm256_mul_ps(e4m3x8_over256(row + d), _mm256_set1_ps(sc[d / q.group] * 256.f)));
  return n8;
}

// A row of a quantized cache (layout in quant_attention.h) as f32 into dst[0, round_up8(n)): code * scale + zero
// (2/4/8-bit codes) or e4m3(code) * scale, 8 values at a time where the scale groups allow.
inline void quant_row_to_f32(const QuantDesc& q, const CodeUnpack& u, DType t, int64_t b, int64_t h, int64_t s,
                             int64_t n, float* dst) {
  if (s >= q.n_quant) {
    row_to_f32(row_ptr(q.residual, t, b, h, s - q.n_quant), t, n, dst);
    return;
  }
  const uint8_t* row = q.data + b * q.d_sb + h * q.d_sh + s * q.d_sr;
  const int bits = q.bits;
  const int64_t n8 = n / 8 * 8;
  const uint16_t* sc = q.scale + b * q.s_sb + h * q.s_sh;
  const uint16_t* zp = q.zero + b * q.s_sb + h * q.s_sh;
  int64_t d = 0;
  if (q.codes == Codes::E4M3) {
    d = e4m3_row_to_f32(q, row, b, h, s, n8, dst);
  } else if (q.per_channel) {  // one scale per channel of this group of slots
    sc += (s / q.group) * q.s_sr, zp += (s / q.group) * q.s_sr;
    for (; d < n8; d += 8) {
      const __m256 scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + d)));
      const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + d)));
      _mm256_storeu_ps(dst + d, _mm256_fmadd_ps(u.codes8(row + d * bits / 8), scv, zv));
    }
  } else if (q.group % 8 == 0) {  // one scale per group of channels of this slot, 8 channels at a time
    token_row_to_f32(row, sc + s * q.s_sr, zp + s * q.s_sr, q.group, bits, u, n8, dst);
    d = n8;
  }
  for (; d < n; ++d) dst[d] = quant_elem(q, t, b, h, s, d);  // the rest, one value at a time
  for (d = n; d < round_up8(n); ++d) dst[d] = 0.f;
}

// Rows of a block of N keys as f32: in place (f32 rows whose width is a multiple of 8) or converted into buf
// with zero padding to round_up8(n). Missing keys (j >= nb) point at a zero row.
template <int64_t N>
struct Rows {
  const float* row[N];
};
using BlockRows = Rows<kBlk>;

// Where a block's rows come from: a plain operand, or a quantized buffer when q is set.
struct Source {
  const Operand* op;
  const QuantDesc* q;
  CodeUnpack unpack;
  Source(const Operand* o, const QuantDesc* qd) : op(o), q(qd), unpack(qd ? qd->bits : 8) {}
};

// Whether n-wide rows of src can be read in 8-value chunks (block_src), each chunk under one scale and zero.
// E4M3 rows go row by row (quant_row_to_f32): the block paths below read integer codes.
inline bool chunked(const Source& src, int64_t n) {
  return n % 8 == 0 && (!src.q || (src.q->codes == Codes::Uint && (src.q->per_channel || src.q->group % 8 == 0)));
}

// Where each of a block's 32 rows comes from, set up once per block. Slots below n_quant hold codes, so the
// quantized rows are a prefix [0, nq); then plain rows (the residual, or an unquantized source) up to nb, then
// the zero row (all-zero bits are 0 in every storage type).
struct BlockSrc {
  const char* p[kWide];
  const uint16_t* sc[kWide];  // rows [0, nq): their scales and zeros (per token: of the row; per channel: of
  const uint16_t* zp[kWide];  // the row's slot group)
  int64_t nq = 0;
};

inline void block_src(const Source& src, DType t, int64_t b, int64_t h, int64_t j0, int64_t nb, const float* zeros,
                      BlockSrc* bs) {
  const QuantDesc* q = src.q;
  int64_t nq = q ? q->n_quant - j0 : 0;
  nq = nq < 0 ? 0 : (nq > nb ? nb : nq);
  if (nq > 0) {
    const uint8_t* d0 = q->data + b * q->d_sb + h * q->d_sh + j0 * q->d_sr;
    const uint16_t* sc0 = q->scale + b * q->s_sb + h * q->s_sh;
    const uint16_t* zp0 = q->zero + b * q->s_sb + h * q->s_sh;
    int64_t g = q->per_channel ? j0 / q->group : j0, rem = q->per_channel ? j0 % q->group : 0;
    for (int64_t j = 0; j < nq; ++j) {
      bs->p[j] = reinterpret_cast<const char*>(d0 + j * q->d_sr);
      bs->sc[j] = sc0 + g * q->s_sr, bs->zp[j] = zp0 + g * q->s_sr;
      if (!q->per_channel) ++g;
      else if (++rem == q->group) rem = 0, ++g;
    }
  }
  if (nb > nq) {
    const Operand& op = q ? q->residual : *src.op;
    const int64_t step = op.sr * elem_size(t);
    const char* r0 = row_ptr(op, t, b, h, q ? j0 + nq - q->n_quant : j0 + nq);
    for (int64_t j = nq; j < nb; ++j) bs->p[j] = r0 + (j - nq) * step;
    if (!q)  // the block one ahead, a cache line at a time
      for (int64_t off = 0; off < nb * step; off += 64) _mm_prefetch(r0 + kWide * step + off, _MM_HINT_T0);
  }
  for (int64_t j = nb; j < kWide; ++j) bs->p[j] = reinterpret_cast<const char*>(zeros);
  bs->nq = nq;
}

// Values [d, d + 8) of row j of a block as f32; gi = d / group for per-token scales (hoisted by the caller:
// a division per row and chunk costs as much as the dequantization).
inline __m256 plain8(const BlockSrc& bs, int64_t j, int64_t d, DType t) { return load8(bs.p[j] + d * elem_size(t), t); }
inline int64_t group_of(const Source& src, int64_t d) { return src.q && !src.q->per_channel ? d / src.q->group : 0; }
inline __m256 codes8(const BlockSrc& bs, const Source& src, int64_t j, int64_t d, int64_t gi) {
  const QuantDesc& q = *src.q;
  __m256 scv, zv;
  if (q.per_channel) {
    scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bs.sc[j] + d)));
    zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bs.zp[j] + d)));
  } else {
    scv = _mm256_set1_ps(_cvtsh_ss(bs.sc[j][gi]));
    zv = _mm256_set1_ps(_cvtsh_ss(bs.zp[j][gi]));
  }
  return _mm256_fmadd_ps(src.unpack.codes8(reinterpret_cast<const uint8_t*>(bs.p[j]) + d * q.bits / 8), scv, zv);
}

// The block's rows [j0, j0 + nb) of KV head h as f32 row pointers (see Rows); rows past nb point at zeros.
template <int64_t N>
void block_rows(const Source& src, DType t, int64_t b, int64_t h, int64_t j0, int64_t nb, int64_t n, float* buf,
                const float* zeros, Rows<N>* out) {
  const int64_t np = round_up8(n);
  const bool direct = !src.q && t == DType::F32 && n % 8 == 0;
  if (!direct && chunked(src, n)) {  // whole 8-value chunks: one pass, no per-row calls
    BlockSrc bs;
    block_src(src, t, b, h, j0, nb, zeros, &bs);
    for (int64_t j = 0; j < N; ++j) out->row[j] = j < nb ? buf + j * np : zeros;
    if (const QuantDesc* q = src.q; q && bs.nq > 0) {
      const CodeUnpack& u = src.unpack;
      if (!q->per_channel) {  // per token: row by row
        for (int64_t j = 0; j < bs.nq; ++j)
          token_row_to_f32(reinterpret_cast<const uint8_t*>(bs.p[j]), bs.sc[j], bs.zp[j], q->group, q->bits, u, n,
                           buf + j * np);
      } else if (bs.sc[0] == bs.sc[bs.nq - 1]) {  // per channel, all in one group of slots: one scale per chunk
        for (int64_t d = 0; d < n; d += 8) {
          const __m256 scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bs.sc[0] + d)));
          const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bs.zp[0] + d)));
          for (int64_t j = 0; j < bs.nq; ++j)
            _mm256_storeu_ps(buf + j * np + d,
                             _mm256_fmadd_ps(u.codes8(reinterpret_cast<const uint8_t*>(bs.p[j]) + d * q->bits / 8), scv, zv));
        }
      } else {
        for (int64_t d = 0; d < n; d += 8)
          for (int64_t j = 0; j < bs.nq; ++j) _mm256_storeu_ps(buf + j * np + d, codes8(bs, src, j, d, 0));
      }
    }
    for (int64_t d = 0; d < n; d += 8)
      for (int64_t j = bs.nq; j < nb; ++j) _mm256_storeu_ps(buf + j * np + d, plain8(bs, j, d, t));
    return;
  }
  for (int64_t j = 0; j < N; ++j) {
    if (j >= nb) {
      out->row[j] = zeros;
      continue;
    }
    if (src.q) {
      quant_row_to_f32(*src.q, src.unpack, t, b, h, j0 + j, n, buf + j * np);
      out->row[j] = buf + j * np;
      continue;
    }
    const char* p = row_ptr(*src.op, t, b, h, j0 + j);
    _mm_prefetch(p + 32 * src.op->sr * elem_size(t), _MM_HINT_T0);  // the same key 32 slots ahead
    if (direct) {
      out->row[j] = reinterpret_cast<const float*>(p);
    } else {
      row_to_f32(p, t, n, buf + j * np);
      out->row[j] = buf + j * np;
    }
  }
}

using WideRows = Rows<kWide>;

// 8x8 transpose of r in place: r[i] lane j becomes r[j] lane i.
inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// KT[d][j] = rows[j][d] for the block's 32 keys and n (a multiple of 8) values, by 8x8 transposes.
inline void transpose_block(const WideRows& k, int64_t n, float* KT) {
  for (int64_t j = 0; j < kWide; j += 8)
    for (int64_t d = 0; d < n; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(k.row[j + i] + d);
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(KT + (d + i) * kWide + j, r[i]);
    }
}

// The f16 scales and zeros of scale group g of 8 keys quantized per token, from the first key's scale row (the
// keys' rows s_sr apart; s_sr = 1: one group per row).
inline void token_scales8(const uint16_t* sc, const uint16_t* zp, int64_t s_sr, int64_t g, __m256* scv, __m256* zv) {
  if (s_sr == 1) {
    *scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
    *zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp)));
    return;
  }
  const int64_t s = s_sr;
  *scv = _mm256_cvtph_ps(_mm_setr_epi16(sc[g], sc[s + g], sc[2 * s + g], sc[3 * s + g], sc[4 * s + g],
                                        sc[5 * s + g], sc[6 * s + g], sc[7 * s + g]));
  *zv = _mm256_cvtph_ps(_mm_setr_epi16(zp[g], zp[s + g], zp[2 * s + g], zp[3 * s + g], zp[4 * s + g],
                                       zp[5 * s + g], zp[6 * s + g], zp[7 * s + g]));
}

// A whole block of 32 quantized keys with 4-bit codes straight into KT (keys as lanes), with no float
// transpose: an 8-key tile's row chunks (4 bytes each) are read as one vector, so lane i holds key i's 8 codes,
// and value k of every key is one shift and mask away. Dequantized with the keys' scales (per token: a vector
// of the 8 keys' scales for the chunk's group) or the channels' (per channel: a tile lies in one group of
// slots, which needs j0 and the group to be multiples of 8). Returns false, writing nothing, where that fails.
inline bool q4_block_T(const QuantDesc& q, int64_t b, int64_t h, int64_t j0, int64_t n, float* KT) {
  const bool per_token = !q.per_channel;
  if (!per_token && (j0 % 8 || q.group % 8)) return false;
  const uint8_t* rows = q.data + b * q.d_sb + h * q.d_sh + j0 * q.d_sr;
  const uint16_t* sc0 = q.scale + b * q.s_sb + h * q.s_sh;
  const uint16_t* zp0 = q.zero + b * q.s_sb + h * q.s_sh;
  // The block two ahead, a cache line at a time: its codes and (per token) its scales and zeros.
  for (int64_t off = 0; off < kWide * q.d_sr; off += 64) _mm_prefetch(rows + 2 * kWide * q.d_sr + off, _MM_HINT_T0);
  if (per_token)
    for (int64_t off = 0; off < kWide * q.s_sr * 2; off += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(sc0 + (j0 + 2 * kWide) * q.s_sr) + off, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(zp0 + (j0 + 2 * kWide) * q.s_sr) + off, _MM_HINT_T0);
    }
  const __m256i gather_idx =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(q.d_sr)));
  const __m256i mask = _mm256_set1_epi32(0xF);
  int64_t g = per_token ? 0 : j0 / q.group, rem = per_token ? 0 : j0 % q.group;  // per channel: the tile's group
  for (int64_t jb = 0; jb < kWide; jb += 8, rem += 8) {
    while (rem >= q.group) rem -= q.group, ++g;
    const uint16_t* sc = per_token ? sc0 + (j0 + jb) * q.s_sr : sc0 + g * q.s_sr;  // this tile's scale rows
    const uint16_t* zp = per_token ? zp0 + (j0 + jb) * q.s_sr : zp0 + g * q.s_sr;
    for (int64_t d = 0; d < n; d += 8) {
      __m256 scv, zv;
      if (!per_token) {  // the 8 channels' scales; lane k is broadcast for channel d + k below
        scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + d)));
        zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + d)));
      } else {
        token_scales8(sc, zp, q.s_sr, d / q.group, &scv, &zv);
      }
      const uint8_t* base = rows + jb * q.d_sr + d / 2;
      const __m256i v = q.d_sr == 4 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base))  // 8-value rows
                                    : _mm256_i32gather_epi32(reinterpret_cast<const int*>(base), gather_idx, 1);
      for (int k = 0; k < 8; ++k) {
        const __m256 c = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * k), mask));
        __m256 x;
        if (per_token) {
          x = _mm256_fmadd_ps(c, scv, zv);
        } else {
          const __m256i lane = _mm256_set1_epi32(k);
          x = _mm256_fmadd_ps(c, _mm256_permutevar8x32_ps(scv, lane), _mm256_permutevar8x32_ps(zv, lane));
        }
        _mm256_storeu_ps(KT + (d + k) * kWide + jb, x);
      }
    }
  }
  return true;
}

// The block's keys in both layouts, in one pass: KT [n][32] (keys as lanes) and, when rows_out is set, the rows
// as f32 [32][n] in buf. Rows are plain (f32/bf16/f16) or 2/4/8-bit codes with their scale and zero
// (quant_attention.h), dequantized in registers; n is a multiple of 8 (see chunked).
inline void load_block_T(const Source& src, DType t, int64_t b, int64_t h, int64_t j0, int64_t nb, int64_t n,
                         const float* zeros, float* KT, float* buf, WideRows* rows_out) {
  // Whole 4-bit blocks skip the f32 rows and their transposes when the caller needs only KT.
  if (!rows_out && src.q && src.q->bits == 4 && nb == kWide && src.q->n_quant - j0 >= kWide &&
      q4_block_T(*src.q, b, h, j0, n, KT))
    return;
  BlockSrc bs;
  block_src(src, t, b, h, j0, nb, zeros, &bs);
  for (int64_t jb = 0; jb < kWide; jb += 8) {
    for (int64_t d = 0; d < n; d += 8) {
      __m256 r[8];
      const int64_t gi = group_of(src, d);
      if (jb >= bs.nq) {
        for (int i = 0; i < 8; ++i) r[i] = plain8(bs, jb + i, d, t);
      } else if (jb + 8 <= bs.nq) {
        for (int i = 0; i < 8; ++i) r[i] = codes8(bs, src, jb + i, d, gi);
      } else {
        for (int i = 0; i < 8; ++i) r[i] = jb + i < bs.nq ? codes8(bs, src, jb + i, d, gi) : plain8(bs, jb + i, d, t);
      }
      if (rows_out)
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(buf + (jb + i) * n + d, r[i]);
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(KT + (d + i) * kWide + jb, r[i]);
    }
  }
  if (rows_out)
    for (int64_t j = 0; j < kWide; ++j) rows_out->row[j] = buf + j * n;
}

}  // namespace
}  // namespace mha2mla::kernels::avx2
