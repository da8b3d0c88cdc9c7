#pragma once
// AVX-512 split-KV decode on vdpbf16ps over bf16 caches and 4-bit, 8-bit or E4M3 KIVI caches read in place
// (decode_split_bf16).
// Part of the AVX-512 attention kernels (attention_avx512_impl.h); internal linkage, compiled with -mavx512* only.
#include "kernels/attention_avx512_common.h"

namespace mha2mla::kernels {
namespace {
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
// A bf16 cache takes the same path, as the residual of a buffer with nothing quantized. So do E4M3 keys per
// channel and values per token (C = E4M3): every E4M3 value is exact in bf16, the scales are f32 and there is no
// zero point.
inline bool split_bf16_apply(const AttnArgs& a) {
  const QuantDesc* k = a.kq;
  const QuantDesc* v = a.vq;
  const bool kivi = k && v && k != v && k->per_channel && k->group > 0 && !v->per_channel;
  const bool codes = kivi && pair_codes(*k) >= 0;
  return all_bf16(a) && (codes || (!k && !v)) && a.D2 == 0 && a.D1 % 32 == 0 && a.Hq / a.groups * a.T <= 64;
}

// 32 byte codes (8-bit or E4M3) -> their bf16 values, in order (exact).
template <PairCodes C>
inline __m512i bytes32_to_bf16(const uint8_t* p) {
  return (__m512i)_mm512_cvtne2ps_pbh(byte_codes16<C>(p + 16, 16), byte_codes16<C>(p, 16));
}

// 32 codes (16 bytes, low nibble first) -> their bf16 values, in order.
inline __m512i codes32_to_bf16(const uint8_t* p) {
  const __m512i tbl = _mm512_castsi256_si512(_mm256_load_si256(reinterpret_cast<const __m256i*>(q4_tables().bf)));
  const __m512i byte = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // Each 32-bit lane: low code in its low half, high code in its high half (indices 0..15 of the table).
  const __m512i idx = _mm512_and_si512(_mm512_or_si512(byte, _mm512_slli_epi32(byte, 12)), _mm512_set1_epi32(0x000F000F));
  return _mm512_permutexvar_epi16(idx, tbl);
}

// C: the keys' codes (a bf16 cache has none and takes Uint4).
template <PairCodes C>
void decode_split_bf16(const AttnArgs& a, const QuantDesc& kq, const QuantDesc& vq, int64_t b, int64_t grp, int64_t s0,
                       int64_t s1, const Partial& out) {
  const int64_t g = a.Hq / a.groups, R = g * a.T, hdiv = a.Hq / a.Hkv, D = a.D1, Dv = a.Dv, Dvp = round_up(Dv, 16);
  const int64_t kv0 = grp * g / hdiv;
  // Values summed on their codes (4-bit, or E4M3 beside E4M3 keys).
  const bool v4 = pair_codes(vq) == static_cast<int>(C) && (vq.group >= Dv || vq.group % 16 == 0);
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
      if constexpr (!has_zero(C)) {  // q times the f32 scales
        const float* scl = kq.scale32 + ksb + key_group * kq.s_sr;
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t d = 0; d < D; d += 16) {
            const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(Qb[r] + d))), 16));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(Qs + r * D + d),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(x, _mm512_loadu_ps(scl + d))));
          }
          bias[r] = 0.f;
        }
      } else {
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
    }
    const uint16_t* kbrow[kDecBlock];
    for (int64_t j = 0; j < nb; ++j) {
      if (kqb) {
        for (int64_t d = 0; d < D; d += 32) {
          if constexpr (C == PairCodes::Uint4)
            _mm512_storeu_si512(Kb + j * D + d, codes32_to_bf16(kcodes + (j0 + j) * kq.d_sr + d / 2));
          else
            _mm512_storeu_si512(Kb + j * D + d, bytes32_to_bf16<C>(kcodes + (j0 + j) * kq.d_sr + d));
        }
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
        alignas(64) float sf[kDecBlock] = {};
        for (int64_t j = 0; j < nb; ++j) {
          const int64_t so = vsb + (j0 + j) * vq.s_sr + gv;
          if constexpr (has_zero(C)) sh[j] = vq.scale[so], zh[j] = vq.zero[so];
          else sf[j] = vq.scale32[so];
        }
        const __m512 sv = has_zero(C) ? load_f16x16(sh, 0xffff) : _mm512_load_ps(sf);
        const __m512 zv = load_f16x16(zh, 0xffff);
        for (int64_t r = 0; r < R; ++r) {
          const __m512 p = _mm512_loadu_ps(P + r * kDecBlock);
          if constexpr (has_zero(C)) acc[r * Da + Dvp + gv] += _mm512_reduce_add_ps(_mm512_mul_ps(p, zv));
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
        if constexpr (C == PairCodes::Uint4) codes_to_pairs(ra, two ? ra + vq.d_sr : nullptr, Dv, V2 + jp * Da);
        else byte_rows_to_pairs<C>(ra, two ? ra + vq.d_sr : nullptr, Dv, V2 + jp * Da);
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

}  // namespace
}  // namespace mha2mla::kernels
