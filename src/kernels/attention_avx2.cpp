// AVX2 attention for CPUs without AVX-512 (f32 arithmetic for f32/bf16/f16 storage). Compiled with
// -mavx2 -mfma -mf16c; called only when cpu_has_avx2(). Decode only: prompts take the libtorch reference on
// these CPUs (kernels_for(Variant::Avx2).prefill_tile is null).
//
// Decode over a split [s0, s1) of the keys for the g·T query rows of one work item, 8 keys per block:
//   each key row is converted to f32 once per block (bf16/f16, or dequantized from 2/4/8-bit codes; f32 rows of
//   a multiple of 8 are read in place) and shared by every query row; scores come from one reduce8 per row and
//   block, and the online softmax rescales the row's accumulator one 8-wide chunk of the value width at a time.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention_args.h"
#include "kernels/simd_avx2.h"

namespace mha2mla::kernels::avx2 {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kBlk = 8;  // keys per block: one score vector

// Spreads 8 codes of `bits` bits (`bits` bytes) to 32-bit lanes: one byte shuffle and one variable shift.
struct CodeUnpack {
  __m128i pick;
  __m256i shift, mask;
  int bits = 8;
  explicit CodeUnpack(int b) : bits(b) {
    const int per_byte = 8 / b;
    alignas(16) int8_t pk[16];
    alignas(32) int32_t sh[8];
    for (int k = 0; k < 16; ++k) pk[k] = k < 8 ? static_cast<int8_t>(k / per_byte) : -1;
    for (int k = 0; k < 8; ++k) sh[k] = (k % per_byte) * b;
    pick = _mm_load_si128(reinterpret_cast<const __m128i*>(pk));
    shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh));
    mask = _mm256_set1_epi32((1 << b) - 1);
  }
  __m256 codes8(const uint8_t* p) const {
    uint64_t raw = 0;  // exactly `bits` bytes: a row's last codes may end its buffer
    if (bits == 8) {
      std::memcpy(&raw, p, 8);
    } else if (bits == 4) {
      uint32_t r4;
      std::memcpy(&r4, p, 4);
      raw = r4;
    } else {
      uint16_t r2;
      std::memcpy(&r2, p, 2);
      raw = r2;
    }
    const __m128i bytes = _mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(raw)), pick);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(bytes), shift), mask));
  }
};

// A 2/4/8-bit row of a quantized cache (layout in quant_attention.h) as f32 into dst[0, round_up8(n)):
// code * scale + zero, 8 values at a time where the scale groups allow.
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
  if (q.per_channel) {  // one scale per channel of this group of slots
    sc += (s / q.group) * q.s_sr, zp += (s / q.group) * q.s_sr;
    for (; d < n8; d += 8) {
      const __m256 scv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + d)));
      const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + d)));
      _mm256_storeu_ps(dst + d, _mm256_fmadd_ps(u.codes8(row + d * bits / 8), scv, zv));
    }
  } else if (q.group % 8 == 0) {  // one scale per group of channels of this slot, 8 channels at a time
    sc += s * q.s_sr, zp += s * q.s_sr;
    for (; d < n8; d += 8) {
      const __m256 scv = _mm256_set1_ps(_cvtsh_ss(sc[d / q.group])), zv = _mm256_set1_ps(_cvtsh_ss(zp[d / q.group]));
      _mm256_storeu_ps(dst + d, _mm256_fmadd_ps(u.codes8(row + d * bits / 8), scv, zv));
    }
  }
  for (; d < n; ++d) dst[d] = quant_elem(q, t, b, h, s, d);  // the rest, one value at a time
  for (d = n; d < round_up8(n); ++d) dst[d] = 0.f;
}

// Rows of a block of keys as f32: in place (f32 rows whose width is a multiple of 8) or converted into buf
// with zero padding to round_up8(n). Missing keys (j >= nb) point at a zero row.
struct BlockRows {
  const float* row[kBlk];
};

// Where a block's rows come from: a plain operand, or a quantized buffer when q is set.
struct Source {
  const Operand* op;
  const QuantDesc* q;
  CodeUnpack unpack;
  Source(const Operand* o, const QuantDesc* qd) : op(o), q(qd), unpack(qd ? qd->bits : 8) {}
};

inline void block_rows(const Source& src, DType t, int64_t b, int64_t h, int64_t j0, int64_t nb, int64_t n,
                       float* buf, const float* zeros, BlockRows* out) {
  const int64_t np = round_up8(n);
  const bool direct = !src.q && t == DType::F32 && n % 8 == 0;
  for (int64_t j = 0; j < kBlk; ++j) {
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
    _mm_prefetch(p + 4 * kBlk * src.op->sr * elem_size(t), _MM_HINT_T0);  // the same key 4 blocks ahead
    if (direct) {
      out->row[j] = reinterpret_cast<const float*>(p);
    } else {
      row_to_f32(p, t, n, buf + j * np);
      out->row[j] = buf + j * np;
    }
  }
}

// s[j] += q · k[j] for the 8 keys of a block, over n (a multiple of 8) values.
inline void block_dots(const float* q, const BlockRows& k, int64_t n, __m256* acc) {
  for (int64_t d = 0; d < n; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < kBlk; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.row[j] + d), acc[j]);
  }
}

void decode_split(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  const int64_t g = a.Hq / a.groups, R = g * a.T, h0 = grp * g, per_kv = a.Hq / a.Hkv;
  const int64_t D1p = round_up8(a.D1), D2p = round_up8(a.D2), Dvp = round_up8(a.Dv);
  const int64_t kv0 = h0 / per_kv, nkv = (h0 + g - 1) / per_kv - kv0 + 1;  // KV heads of the rows (k2)
  const Source k1src{&a.k1, a.kq}, vsrc{&a.v, a.vq}, k2src{&a.k2, a.k2q};
  // MLA: the latent is key and value, converted once.
  const bool v_is_k = a.Dv == a.D1 && (a.kq ? a.vq == a.kq
                                            : !a.vq && a.v.p == a.k1.p && a.v.sb == a.k1.sb && a.v.sh == a.k1.sh &&
                                                  a.v.sr == a.k1.sr);
  const int64_t wmax = D1p > D2p ? (D1p > Dvp ? D1p : Dvp) : (D2p > Dvp ? D2p : Dvp);
  // Scratch: Q1 [R][D1p], Q2 [R][D2p], Acc [R][Dvp], K1/V blocks [8][D1p|Dvp], K2 blocks [nkv][8][D2p], zeros.
  thread_local std::vector<float> scratch;
  const size_t need = R * (D1p + D2p + Dvp) + kBlk * (D1p + Dvp) + nkv * kBlk * D2p + wmax;
  if (scratch.size() < need) scratch.assign(need, 0.f);
  float* Q1 = scratch.data();
  float* Q2 = Q1 + R * D1p;
  float* Acc = Q2 + R * D2p;
  float* K1b = Acc + R * Dvp;
  float* Vb = K1b + kBlk * D1p;
  float* K2b = Vb + kBlk * Dvp;
  float* zeros = K2b + nkv * kBlk * D2p;
  for (int64_t i = 0; i < wmax; ++i) zeros[i] = 0.f;
  // Query rows in the log2 domain (the scale folded in), zero-padded; row r = (head h0 + r / T, token r % T).
  const float c = a.scale * kLog2e;
  std::vector<int64_t> lo(R), hi(R);
  std::vector<float> M(R, kNegInf), L(R, 0.f);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = h0 + r / a.T, t = r % a.T;
    row_to_f32(row_ptr(a.q1, a.dtype, b, h, t), a.dtype, a.D1, Q1 + r * D1p);
    for (int64_t d = 0; d < D1p; ++d) Q1[r * D1p + d] *= c;
    if (a.D2) {
      row_to_f32(row_ptr(a.q2, a.dtype, b, h, t), a.dtype, a.D2, Q2 + r * D2p);
      for (int64_t d = 0; d < D2p; ++d) Q2[r * D2p + d] *= c;
    }
    for (int64_t d = 0; d < Dvp; ++d) Acc[r * Dvp + d] = 0.f;
    visible_range(a, a.start + t, &lo[r], &hi[r]);
    if (lo[r] < s0) lo[r] = s0;
    if (hi[r] > s1) hi[r] = s1;
  }
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  BlockRows K1, V;
  std::vector<BlockRows> k2(a.D2 ? nkv : 0);
  for (int64_t j0 = s0; j0 < s1; j0 += kBlk) {
    const int64_t nb = s1 - j0 < kBlk ? s1 - j0 : kBlk;
    // Keys the batch row holds (valid), as a lane mask.
    __m256 key_ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    if (a.valid) {
      alignas(32) int32_t ok[kBlk];
      for (int64_t j = 0; j < kBlk; ++j) ok[j] = j < nb && a.valid[b * a.S + j0 + j] ? -1 : 0;
      key_ok = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(ok)));
    }
    block_rows(k1src, a.dtype, b, kv0, j0, nb, a.D1, K1b, zeros, &K1);
    if (v_is_k) V = K1;
    else block_rows(vsrc, a.dtype, b, kv0, j0, nb, a.Dv, Vb, zeros, &V);
    for (int64_t i = 0; i < static_cast<int64_t>(k2.size()); ++i)
      block_rows(k2src, a.dtype, b, kv0 + i, j0, nb, a.D2, K2b + i * kBlk * D2p, zeros, &k2[i]);
    const __m256 idx = _mm256_add_ps(_mm256_set1_ps(static_cast<float>(j0)), iota);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t l = lo[r], hh = hi[r] < j0 + nb ? hi[r] : j0 + nb;
      if (l >= hh || j0 >= hh) continue;  // the row sees no key of this block
      __m256 acc[kBlk];
      for (auto& x : acc) x = _mm256_setzero_ps();
      block_dots(Q1 + r * D1p, K1, D1p, acc);
      if (a.D2) block_dots(Q2 + r * D2p, k2[(h0 + r / a.T) / per_kv - kv0], D2p, acc);
      // Slots are exact in f32 up to 2^24, far beyond any cache.
      const __m256 vis = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(idx, _mm256_set1_ps(static_cast<float>(l)), _CMP_GE_OQ),
                                                     _mm256_cmp_ps(idx, _mm256_set1_ps(static_cast<float>(hh)), _CMP_LT_OQ)),
                                       key_ok);
      const __m256 s = _mm256_blendv_ps(_mm256_set1_ps(kNegInf), reduce8(acc), vis);
      const float mb = hmax8(s);
      if (mb == kNegInf) continue;
      const float m_new = M[r] > mb ? M[r] : mb;
      const float alpha = M[r] == kNegInf ? 0.f : std::exp2(M[r] - m_new);
      const __m256 p = exp2_ps(_mm256_sub_ps(s, _mm256_set1_ps(m_new)));
      L[r] = L[r] * alpha + hsum8(p);
      M[r] = m_new;
      alignas(32) float pj[kBlk];
      _mm256_store_ps(pj, p);
      const __m256 av = _mm256_set1_ps(alpha);
      float* acc_r = Acc + r * Dvp;
      for (int64_t d = 0; d < Dvp; d += 8) {
        __m256 o = _mm256_mul_ps(_mm256_loadu_ps(acc_r + d), av);
        for (int j = 0; j < kBlk; ++j) o = _mm256_fmadd_ps(_mm256_set1_ps(pj[j]), _mm256_loadu_ps(V.row[j] + d), o);
        _mm256_storeu_ps(acc_r + d, o);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    out.m[r] = M[r];
    out.l[r] = L[r];
    for (int64_t d = 0; d < a.Dv; ++d) out.acc[r * a.Dv + d] = Acc[r * Dvp + d];
  }
}

}  // namespace

const AttnKernels kAttn{nullptr, decode_split};

}  // namespace mha2mla::kernels::avx2
