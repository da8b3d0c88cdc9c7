#pragma once
// Scores of a whole block of 32 cached keys held as 4-bit codes, by integer dot products, for the wide path of
// the AVX2 attention (attention_avx2.cpp): absorbed MLA over a 4-bit latent and 4-bit rotary keys.
//
// Each query row becomes two int8 terms (its value in steps of 1/127 of its largest, and the rounding left over
// in steps 256 times finer: about 15 bits, more than a bf16 query carries), and vpmaddubsw multiplies them with
// the codes as they lie in the cache, nibbles split into bytes: 32 products per instruction, against 8 per f32
// FMA, and no key code is turned into a float to be scored. A key's scale and zero apply once per key and group:
//   per token   q·(sc·code + z) = sc · (q·code) + z · Σq      (Σq over the group, exact);
//   per channel q·(sc ⊙ code + z) = (q ⊙ sc)·code + q·z      (the query is scaled again per group of slots).
// Taken for bf16/f16 compute only: f32 results are held to f32 rounding, which int8 terms do not meet.
//
// Internal linkage, compiled with -mavx2 -mfma -mf16c (see simd_avx2.h): include from *_avx2.cpp files alone.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/attention_avx2_rows.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

// Arrays of vectors below are filled up to counts known only at run time (scale groups, vectors of rows); GCC
// cannot see that they are read within them, and zero-filling them costs a rep stos per tile.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

constexpr int64_t kInt4Keys = 32;     // keys per block (the wide path's kWide)
constexpr int64_t kInt4MaxChunks = 8;  // 8-value chunks per row this path takes (rows up to 64 values)

// One part of the query rows (the latent, or the RoPE keys of one KV head) as two int8 terms:
// q ≈ alpha · (256 · hi + lo) (pack_query_row). Chunk k (values 8k .. 8k+7) is four 4-byte words: hi of the even
// values, hi of the odd ones, lo of the even ones, lo of the odd ones; even and odd is the order in which a 4-bit
// row's bytes come apart into low nibbles (even values) and high nibbles (odd values).
struct Int8Query {
  int64_t nch = 0, ngroups = 0;
  std::vector<int32_t> w;    // [R][nch][4]
  std::vector<float> alpha;  // [R]
  std::vector<float> bias;   // per token: [R][ngroups] Σ q over each scale group; per channel: [R] q·zero
  void size_for(int64_t R, int64_t n, int64_t groups) {
    nch = n / 8, ngroups = groups;
    if (static_cast<int64_t>(w.size()) < R * nch * 4) w.resize(R * nch * 4);
    if (static_cast<int64_t>(alpha.size()) < R) alpha.resize(R);
    if (static_cast<int64_t>(bias.size()) < R * groups) bias.resize(R * groups);
  }
};

// n values of q (a multiple of 8) as int8 words of row r: q / step = hi + lo / 256, hi and lo rounded to nearest
// (|hi| <= 127, |lo| <= 128 clamped to 127), so that q keeps about 15 bits below the row's largest value, more
// than a bf16 value carries.
inline void pack_query_row(const float* q, int64_t n, Int8Query& qq, int64_t r) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m8 = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; d += 8) m8 = _mm256_max_ps(m8, _mm256_and_ps(_mm256_loadu_ps(q + d), abs_mask));
  const float mx = hmax8(m8);
  qq.alpha[r] = mx / 127.f / 256.f;  // the value of one unit of lo
  const __m256 inv = _mm256_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
  const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  // 8 int32 as int8 words: the even values, then the odd ones.
  auto words = [&](__m256i v, int32_t* even, int32_t* odd) {
    v = _mm256_permutevar8x32_epi32(v, even_odd);
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
    *even = _mm256_cvtsi256_si32(b);
    *odd = _mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
  };
  int32_t* w = qq.w.data() + r * qq.nch * 4;
  for (int64_t k = 0; k < n / 8; ++k) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * k), inv);
    const __m256 hi = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 lo = _mm256_mul_ps(_mm256_sub_ps(x, hi), _mm256_set1_ps(256.f));
    words(_mm256_cvtps_epi32(hi), w + 4 * k, w + 4 * k + 1);
    words(_mm256_cvtps_epi32(lo), w + 4 * k + 2, w + 4 * k + 3);  // packs saturates 128 to 127
  }
}

// Rows [r0, r1) of Q (row stride ld, n values) against keys quantized per token in groups of `group` values.
inline void prepare_token_query(const float* Q, int64_t ld, int64_t R, int64_t r0, int64_t r1, int64_t n,
                                int64_t group, Int8Query& qq) {
  const int64_t ng = (n + group - 1) / group;
  qq.size_for(R, n, ng);
  for (int64_t r = r0; r < r1; ++r) {
    const float* q = Q + r * ld;
    pack_query_row(q, n, qq, r);
    for (int64_t g = 0; g < ng; ++g) {
      float s = 0.f;
      for (int64_t d = g * group; d < n && d < (g + 1) * group; ++d) s += q[d];
      qq.bias[r * ng + g] = s;
    }
  }
}

// Rows [r0, r1) of Q against keys quantized per channel, with the f16 scales and zeros of one group of slots:
// the query takes the scales, the zeros become one constant per row.
inline void prepare_channel_query(const float* Q, int64_t ld, int64_t R, int64_t r0, int64_t r1, int64_t n,
                                  const uint16_t* sc, const uint16_t* zp, Int8Query& qq) {
  qq.size_for(R, n, 1);
  alignas(32) float scaled[kInt4MaxChunks * 8];
  for (int64_t r = r0; r < r1; ++r) {
    const float* q = Q + r * ld;
    __m256 z = _mm256_setzero_ps();
    for (int64_t d = 0; d < n; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      _mm256_store_ps(scaled + d, _mm256_mul_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + d)))));
      z = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + d))), z);
    }
    pack_query_row(scaled, n, qq, r);
    qq.bias[r] = hsum8(z);
  }
}

// How chunk k of 8 consecutive rows (row stride d_sr bytes) is gathered into 32-bit lanes, key i in lane i.
// Rows of up to 16 bytes lie in at most 4 vectors of the 8 rows' contiguous bytes: each lane then comes from
// one of them by a permute and a blend, much cheaper than vpgatherdd. Longer or spaced rows are gathered.
struct ChunkGather {
  int64_t d_sr = 0, nvec = 0;  // nvec > 0: the rows are contiguous, read as nvec vectors
  __m256i idx[kInt4MaxChunks][4], sel[kInt4MaxChunks][4];  // per chunk and vector: dword index, lanes taken
  __m256i gather_idx{};
  ChunkGather() = default;
  ChunkGather(int64_t row_bytes, int64_t stride, int64_t nch) : d_sr(stride) {
    gather_idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(stride)));
    if (stride != row_bytes || stride % 4 || stride > 16) return;
    const int64_t m = stride / 4;  // dwords per row: chunk k of key i is dword m·i + k
    nvec = m;
    for (int64_t k = 0; k < nch; ++k)
      for (int64_t v = 0; v < nvec; ++v) {
        alignas(32) int32_t ix[8], sl[8];
        for (int i = 0; i < 8; ++i) {
          const int64_t dw = m * i + k;
          ix[i] = static_cast<int32_t>(dw % 8);
          sl[i] = dw / 8 == v ? -1 : 0;
        }
        idx[k][v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(ix));
        sel[k][v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(sl));
      }
  }
};

// Chunks [0, NCH) of 8 rows as stored (raw) and split into nibbles: lo[k] holds values 8k, 8k+2, 8k+4, 8k+6 of
// each key, hi[k] the odd ones, a byte each.
template <int NCH>
struct KeyNibbles {
  __m256i raw[NCH], lo[NCH], hi[NCH];
  KeyNibbles(const uint8_t* rows, const ChunkGather& cg) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    __m256i vec[4];  // one load each: as a loop, GCC turns them into a call to memcpy
    auto load = [&](int v) { vec[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + 32 * v)); };
    if (cg.nvec > 0) load(0);
    if (cg.nvec > 1) load(1);
    if (cg.nvec > 2) load(2);
    if (cg.nvec > 3) load(3);
    for (int k = 0; k < NCH; ++k) {
      __m256i x;
      if (cg.nvec == 1) {  // 4-byte rows: the vector is the chunk
        x = vec[0];
      } else if (cg.nvec) {
        x = _mm256_and_si256(_mm256_permutevar8x32_epi32(vec[0], cg.idx[k][0]), cg.sel[k][0]);
        for (int64_t v = 1; v < cg.nvec; ++v)
          x = _mm256_blendv_epi8(x, _mm256_permutevar8x32_epi32(vec[v], cg.idx[k][v]), cg.sel[k][v]);
      } else {
        x = _mm256_i32gather_epi32(reinterpret_cast<const int*>(rows + 4 * k), cg.gather_idx, 1);
      }
      raw[k] = x;
      lo[k] = _mm256_and_si256(x, m);
      hi[k] = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);
    }
  }
};

constexpr int kTiles = kInt4Keys / 8;  // 8-key tiles per block

// A block's 32 keys of one head of a 4-bit buffer, tile by tile: their nibbles and, per token, the scales and
// zeros of their scale groups.
template <int NCH>
struct BlockCodes {
  KeyNibbles<NCH> tile[kTiles];
  __m256 scv[kTiles][NCH], zv[kTiles][NCH];  // per token: groups [0, ng)
  int64_t ng = 0, cpg = 0;                     // scale groups per row, 8-value chunks per group
  BlockCodes(const QuantDesc& q, const ChunkGather& cg, int64_t b, int64_t h, int64_t j0, int64_t n)
      : tile{{q.data + b * q.d_sb + h * q.d_sh + j0 * q.d_sr, cg},
             {q.data + b * q.d_sb + h * q.d_sh + (j0 + 8) * q.d_sr, cg},
             {q.data + b * q.d_sb + h * q.d_sh + (j0 + 16) * q.d_sr, cg},
             {q.data + b * q.d_sb + h * q.d_sh + (j0 + 24) * q.d_sr, cg}} {
    static_assert(kTiles == 4, "one initialiser per tile");
    if (q.per_channel) return;
    ng = (n + q.group - 1) / q.group, cpg = q.group / 8;
    const uint16_t* sc = q.scale + b * q.s_sb + h * q.s_sh + j0 * q.s_sr;
    const uint16_t* zp = q.zero + b * q.s_sb + h * q.s_sh + j0 * q.s_sr;
    for (int t = 0; t < kTiles; ++t)
      for (int64_t g = 0; g < ng; ++g) token_scales8(sc + 8 * t * q.s_sr, zp + 8 * t * q.s_sr, q.s_sr, g, &scv[t][g], &zv[t][g]);
  }
};

// Σ over chunks [k0, k1) (at most 4: the int16 sums stay below 4 · 4 · 15 · 127 < 2^15) of one tile's codes
// times the query's words q[4k .. 4k+3] (Int8Query), as int32 per key: 256 · (codes · hi) + codes · lo.
template <int NCH>
inline __m256i chunk_dots(const KeyNibbles<NCH>& kn, const __m256i* q, int k0, int k1) {
  __m256i hi = _mm256_setzero_si256(), lo = hi;
  for (int k = k0; k < k1; ++k) {
    hi = _mm256_add_epi16(hi, _mm256_add_epi16(_mm256_maddubs_epi16(kn.lo[k], q[4 * k]), _mm256_maddubs_epi16(kn.hi[k], q[4 * k + 1])));
    lo = _mm256_add_epi16(lo, _mm256_add_epi16(_mm256_maddubs_epi16(kn.lo[k], q[4 * k + 2]), _mm256_maddubs_epi16(kn.hi[k], q[4 * k + 3])));
  }
  const __m256i ones = _mm256_set1_epi16(1);
  return _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(hi, ones), 8), _mm256_madd_epi16(lo, ones));
}

// S[r][0, 32) += scores of rows [r0, r1) (their int8 query in qq) against the block's keys: per token,
// sc · (q·code) + z · Σq per scale group; per channel (scales folded into the query), q·code + q·zero.
template <int NCH>
inline void block_scores(const BlockCodes<NCH>& bc, bool per_channel, const Int8Query& qq, int64_t r0, int64_t r1,
                         float* S) {
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = qq.w.data() + r * NCH * 4;
    __m256i qw[4 * NCH];  // the row's query words, broadcast once for the whole block
    for (int k = 0; k < 4 * NCH; ++k) qw[k] = _mm256_set1_epi32(w[k]);
    const __m256 alpha = _mm256_set1_ps(qq.alpha[r]);
    float* out = S + r * kInt4Keys;
    for (int t = 0; t < kTiles; ++t) {
      const KeyNibbles<NCH>& kn = bc.tile[t];
      __m256 s = _mm256_loadu_ps(out + 8 * t);
      if (per_channel) {
        __m256i dot = _mm256_setzero_si256();
        for (int k = 0; k < NCH; k += 4) dot = _mm256_add_epi32(dot, chunk_dots(kn, qw, k, k + 4 < NCH ? k + 4 : NCH));
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), alpha, _mm256_add_ps(s, _mm256_set1_ps(qq.bias[r])));
      } else if (bc.ng == 1 && NCH <= 4) {  // one scale group per row: the usual latent
        const __m256 dot = _mm256_cvtepi32_ps(chunk_dots(kn, qw, 0, NCH));
        s = _mm256_fmadd_ps(dot, _mm256_mul_ps(bc.scv[t][0], alpha), s);
        s = _mm256_fmadd_ps(bc.zv[t][0], _mm256_set1_ps(qq.bias[r * qq.ngroups]), s);
      } else {
        for (int g = 0, k0 = 0; k0 < NCH; ++g, k0 += static_cast<int>(bc.cpg)) {
          const int k1 = k0 + bc.cpg < NCH ? k0 + static_cast<int>(bc.cpg) : NCH;
          __m256i dot = _mm256_setzero_si256();
          for (int k = k0; k < k1; k += 4) dot = _mm256_add_epi32(dot, chunk_dots(kn, qw, k, k + 4 < k1 ? k + 4 : k1));
          s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(bc.scv[t][g], alpha), s);
          s = _mm256_fmadd_ps(bc.zv[t][g], _mm256_set1_ps(qq.bias[r * qq.ngroups + g]), s);
        }
      }
      _mm256_storeu_ps(out + 8 * t, s);
    }
  }
}

// Where a part of the keys lies: one head of a 4-bit buffer, its query rows [r0, r1).
struct Int4Part {
  const QuantDesc* q;
  int64_t head, n;
  const Int8Query* query;
  int64_t r0, r1;
};

// The latent's scores into S, and its values for P·V into KT (code · scale + zero; KT [n][32], keys as lanes).
template <int NCH>
inline void latent_block(const Int4Part& lat, const ChunkGather& cg, int64_t b, int64_t j0, float* KT, float* S) {
  const QuantDesc& c = *lat.q;
  const BlockCodes<NCH> bc(c, cg, b, lat.head, j0, lat.n);
  block_scores(bc, false, *lat.query, lat.r0, lat.r1, S);
  const __m256i mask = _mm256_set1_epi32(0xF);
  for (int t = 0; t < kTiles; ++t)
    for (int k = 0, g = 0, in_group = 0; k < NCH; ++k, in_group = in_group + 1 == bc.cpg ? 0 : in_group + 1) {
      if (k && !in_group) ++g;
      for (int i = 0; i < 8; ++i) {
        const __m256 code = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(bc.tile[t].raw[k], 4 * i), mask));
        _mm256_storeu_ps(KT + (8 * k + i) * kInt4Keys + 8 * t, _mm256_fmadd_ps(code, bc.scv[t][g], bc.zv[t][g]));
      }
    }
}

// One head's RoPE keys, added to the scores of the rows that read them.
template <int NCH>
inline void rope_block(const Int4Part& part, const ChunkGather& cg, int64_t b, int64_t j0, float* S) {
  const BlockCodes<NCH> bc(*part.q, cg, b, part.head, j0, part.n);
  block_scores(bc, part.q->per_channel, *part.query, part.r0, part.r1, S);
}

// Calls f.template operator()<NCH>() for nch in [1, kInt4MaxChunks].
template <typename F>
inline void with_chunks(int64_t nch, F&& f) {
  switch (nch) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 5: f(std::integral_constant<int, 5>()); break;
    case 6: f(std::integral_constant<int, 6>()); break;
    case 7: f(std::integral_constant<int, 7>()); break;
    default: f(std::integral_constant<int, 8>()); break;
  }
}

// S [rows][32] = scores of every row against the block of 32 keys [j0, j0 + 32), all held as codes, from the
// latent (per token) and the RoPE parts (per token or per channel, read as cg2 says); KT [n][32] = the latent's
// values as f32, keys as lanes, for P·V. S's rows are kInt4Keys apart.
inline void int4_block_scores(const Int4Part& lat, const ChunkGather& cg, const Int4Part* rope, int64_t nrope,
                              const ChunkGather& cg2, int64_t b, int64_t j0, float* KT, float* S) {
  for (int64_t r = 0; r < lat.r1; ++r)
    for (int64_t j = 0; j < kInt4Keys; ++j) S[r * kInt4Keys + j] = 0.f;
  const QuantDesc& c = *lat.q;
  const uint8_t* c_rows = c.data + b * c.d_sb + lat.head * c.d_sh + j0 * c.d_sr;
  // The block two ahead, a cache line at a time: codes, scales and zeros.
  for (int64_t off = 0; off < kInt4Keys * c.d_sr; off += 64)
    _mm_prefetch(reinterpret_cast<const char*>(c_rows) + 2 * kInt4Keys * c.d_sr + off, _MM_HINT_T0);
  const uint16_t* c_sc = c.scale + b * c.s_sb + lat.head * c.s_sh + (j0 + 2 * kInt4Keys) * c.s_sr;
  const uint16_t* c_zp = c.zero + b * c.s_sb + lat.head * c.s_sh + (j0 + 2 * kInt4Keys) * c.s_sr;
  for (int64_t off = 0; off < kInt4Keys * c.s_sr * 2; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(c_sc) + off, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c_zp) + off, _MM_HINT_T0);
  }
  with_chunks(lat.n / 8, [&](auto n) { latent_block<decltype(n)::value>(lat, cg, b, j0, KT, S); });
  if (!nrope) return;
  with_chunks(rope[0].n / 8, [&](auto n) {
    for (int64_t p = 0; p < nrope; ++p) rope_block<decltype(n)::value>(rope[p], cg2, b, j0, S);
  });
}

// The integer scores of one work item of the wide path: its query rows as int8 terms (the RoPE part scaled
// again for each slot group of per-channel RoPE keys) and how its blocks' rows are read.
class Int4Scorer {
 public:
  // Absorbed MLA in bf16/f16 over a 4-bit latent quantized per token, of up to 64 values in whole 8-value
  // chunks and scale groups, and 4-bit RoPE keys, if any, whose scale groups fall on 8-value chunks (per token)
  // or on whole blocks of slots (per channel).
  static bool applies(const AttnArgs& a) {
    const QuantDesc* c = a.kq;
    const QuantDesc* k2 = a.k2q;
    if (a.dtype == DType::F32 || !c || c->bits != 4 || c->per_channel || c->group % 8 || a.D1 % 8 ||
        a.D1 > kInt4MaxChunks * 8)
      return false;
    if (!a.D2) return true;
    return k2 && k2->bits == 4 && a.D2 % 8 == 0 && a.D2 <= kInt4MaxChunks * 8 &&
           (k2->per_channel ? k2->group % kInt4Keys == 0 : k2->group % 8 == 0);
  }

  // Batch row b, query rows Q1 [R][ld1] (latent) and Q2 [R][ld2] (RoPE); RoPE key head i (KV head kv0 + i, of
  // nrope) serves rows [r0[i], r1[i]).
  void prepare(const AttnArgs& a, int64_t b, int64_t R, const float* Q1, int64_t ld1, const float* Q2, int64_t ld2,
               int64_t kv0, int64_t nrope, const int64_t* r0, const int64_t* r1) {
    a_ = &a, b_ = b, Q2_ = Q2, ld2_ = ld2;
    lat_ = {a.kq, kv0, a.D1, &q_lat_, 0, R};
    lat_rows_ = ChunkGather(a.D1 / 2, a.kq->d_sr, a.D1 / 8);
    prepare_token_query(Q1, ld1, R, 0, R, a.D1, a.kq->group, q_lat_);
    q_rope_.resize(nrope);
    rope_.resize(nrope);
    rope_group_.assign(nrope, -1);
    if (nrope) rope_rows_ = ChunkGather(a.D2 / 2, a.k2q->d_sr, a.D2 / 8);
    for (int64_t i = 0; i < nrope; ++i) {
      rope_[i] = {a.k2q, kv0 + i, a.D2, &q_rope_[i], r0[i], r1[i]};
      if (!a.k2q->per_channel) prepare_token_query(Q2, ld2, R, r0[i], r1[i], a.D2, a.k2q->group, q_rope_[i]);
    }
  }

  // Whether keys [j0, j0 + nb) are a whole block held as codes in both buffers, within one slot group of
  // per-channel RoPE keys.
  bool whole_block(int64_t j0, int64_t nb) const {
    if (nb != kInt4Keys || a_->kq->n_quant - j0 < kInt4Keys) return false;
    if (rope_.empty()) return true;
    const QuantDesc& k2 = *a_->k2q;
    return k2.n_quant - j0 >= kInt4Keys && (!k2.per_channel || j0 / k2.group == (j0 + kInt4Keys - 1) / k2.group);
  }

  // int4_block_scores for the whole block from j0.
  void block(int64_t j0, float* KT, float* S) {
    for (size_t i = 0; i < rope_.size(); ++i) {
      const QuantDesc& k2 = *a_->k2q;
      if (!k2.per_channel || rope_group_[i] == j0 / k2.group) continue;
      rope_group_[i] = j0 / k2.group;
      const int64_t off = b_ * k2.s_sb + rope_[i].head * k2.s_sh + rope_group_[i] * k2.s_sr;
      prepare_channel_query(Q2_, ld2_, lat_.r1, rope_[i].r0, rope_[i].r1, a_->D2, k2.scale + off, k2.zero + off,
                            q_rope_[i]);
    }
    int4_block_scores(lat_, lat_rows_, rope_.data(), static_cast<int64_t>(rope_.size()), rope_rows_, b_, j0, KT, S);
  }

 private:
  const AttnArgs* a_ = nullptr;
  int64_t b_ = 0, ld2_ = 0;
  const float* Q2_ = nullptr;
  Int8Query q_lat_;
  std::vector<Int8Query> q_rope_;
  Int4Part lat_{};
  std::vector<Int4Part> rope_;
  std::vector<int64_t> rope_group_;  // per channel: the slot group each RoPE query was scaled for
  ChunkGather lat_rows_, rope_rows_;
};

#pragma GCC diagnostic pop

}  // namespace
}  // namespace mha2mla::kernels::avx2
