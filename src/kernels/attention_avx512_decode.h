#pragma once
// AVX-512 split-KV decode (AttnKernels::decode_split): routes MLA calls to the lanes kernel and bf16/4-bit calls to
// the vdpbf16ps kernel, and runs every other cache type (f32/bf16/f16, 2/4/8-bit codes, E4M3) itself. Part of
// the AVX-512 attention kernels (attention_avx512_impl.h); internal linkage, compiled with -mavx512* only.
#include "kernels/attention_avx512_common.h"
#include "kernels/attention_avx512_mla_lanes.h"
#include "kernels/attention_avx512_split_bf16.h"

namespace mha2mla::kernels {
namespace {
// ---------------------------------------------------------------------------------------------
// Decode over a split [s0, s1) of the keys. Few query rows: dot products run along D and are
// reduced per key; K/V rows shared by every row of the work item are converted once per block.
// (kDecBlock, the keys per block, is in attention_avx512_common.h.)

// kBf16: the CPU has vdpbf16ps (bf16, 4-bit, 8-bit and E4M3 caches on their pairs paths, bf16 keys scored as
// stored).
template <bool kBf16>
void decode_split(const AttnArgs& a, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial& out) {
  if (lanes_apply(a)) return decode_lanes<kBf16>(a, b, s0, s1, out);
  if constexpr (kBf16) if (split_bf16_apply(a)) {
    using P = PairCodes;
    switch (a.kq ? pair_codes(*a.kq) : -1) {  // split_bf16_apply: codes the pairs path reads, or no codes at all
      case static_cast<int>(P::Uint4): return decode_split_bf16<P::Uint4>(a, *a.kq, *a.vq, b, grp, s0, s1, out);
      case static_cast<int>(P::Uint8): return decode_split_bf16<P::Uint8>(a, *a.kq, *a.vq, b, grp, s0, s1, out);
      case static_cast<int>(P::E4M3): return decode_split_bf16<P::E4M3>(a, *a.kq, *a.vq, b, grp, s0, s1, out);
      default: break;
    }
    // A bf16 cache is the in-place path's residual from slot 0 (1.2x faster than the f32 sums below at 32K).
    QuantDesc kd, vd;
    kd.residual = a.k1, vd.residual = a.v;
    kd.group = 1, vd.group = a.Dv;
    return decode_split_bf16<PairCodes::Uint4>(a, kd, vd, b, grp, s0, s1, out);
  }
  const int64_t g = a.Hq / a.groups, R = g * a.T, hdiv = a.Hq / a.Hkv;
  const int64_t D1r = round_up(a.D1, 16), D2r = round_up(a.D2, 16), Dv = a.Dv, Dvp = round_up(Dv, 16);
  const DType kt = a.kv_dtype;  // k1, k2, v and the residuals
  const bool f32 = kt == DType::F32 && a.D1 % 16 == 0 && Dv % 16 == 0 && !a.kq && !a.vq;
  const bool v_is_k = a.v.p != nullptr && a.v.p == a.k1.p && a.v.sb == a.k1.sb && a.v.sh == a.k1.sh && a.v.sr == a.k1.sr && Dv == a.D1;
  // bf16 keys are scored as stored; the scale is applied to the sums instead of to q.
  const bool bf16dot = kBf16 && all_bf16(a) && !a.kq && a.D1 % 32 == 0;
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
  const int64_t kbytes = a.D1 * elem_size(kt), vbytes = Dv * elem_size(kt);
  for (int64_t j0 = lo; j0 < hi; j0 += kDecBlock) {
    const int64_t nb = imin(kDecBlock, hi - j0);
    // Prefetch the K and V rows four blocks ahead: the rows of one head are contiguous, but a split streams
    // two arrays at a time and the hardware prefetcher alone leaves DRAM latency exposed (long contexts:
    // 2.4 -> 1.2 ms for a bf16 SmolLM layer at S = 32K, build/bench_kernels --only decode).
    // Quantized rows are not prefetched: their dequantization, not memory, bounds them (no gain measured).
    if (!a.kq && !a.vq && j0 + 4 * kDecBlock < hi)
      for (int64_t j = 0; j < kDecBlock; ++j) {
        const char* kr = row_ptr(a.k1, kt, b, kv0, j0 + 4 * kDecBlock + j);
        const char* vr = row_ptr(a.v, kt, b, kv0, j0 + 4 * kDecBlock + j);
        for (int64_t o = 0; o < kbytes; o += 64) _mm_prefetch(kr + o, _MM_HINT_T0);
        for (int64_t o = 0; o < vbytes; o += 64) _mm_prefetch(vr + o, _MM_HINT_T0);
      }
    for (int64_t j = 0; j < nb; ++j) {
      if (bf16dot) {
        kbrow[j] = reinterpret_cast<const uint16_t*>(row_ptr(a.k1, kt, b, kv0, j0 + j));
        continue;
      }
      if (a.kq) {
        dequant_row(Kf + j * D1r, *a.kq, kt, b, kv0, j0 + j, a.D1, kgroup);
        krow[j] = Kf + j * D1r;
        continue;
      }
      const char* kr = row_ptr(a.k1, kt, b, kv0, j0 + j);
      if (f32) {
        krow[j] = reinterpret_cast<const float*>(kr);
      } else {
        row_to_f32(Kf + j * D1r, kr, kt, a.D1);
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
          dequant_row(K2f + (r * kDecBlock + j) * D2r, *a.k2q, kt, b, kvh[r], j0 + j, a.D2, k2group);
        else
          row_to_f32(K2f + (r * kDecBlock + j) * D2r, row_ptr(a.k2, kt, b, kvh[r], j0 + j), kt, a.D2);
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
      if constexpr (kBf16) {
        if (bf16dot) dot16_bf16(Qb[r], kbrow, a.D1, dacc);
        else dot16(Q1 + r * D1r, krow, D1r, dacc);
      } else {
        dot16(Q1 + r * D1r, krow, D1r, dacc);
      }
      if (a.D2) dot16(Q2 + r * D2r, k2row, D2r, dacc);
      __m512 sums = reduce16(dacc);
      if (bf16dot) sums = _mm512_mul_ps(sums, _mm512_set1_ps(c));
      split_row_softmax(a, valid, full, j0, nb, pos[r], sums, pr, m[r], l[r], acc + r * Dvp, Dvp);
    }
    for (int64_t j = 0; j < nb; ++j) {
      if (a.vq && a.vq == a.kq && Dv == a.D1) {
        vrow[j] = krow[j];  // quantized MLA latent: dequantized once, as key and as value
      } else if (a.vq) {
        dequant_row(Vf + j * Dvp, *a.vq, kt, b, kv0, j0 + j, Dv, vgroup);
        vrow[j] = Vf + j * Dvp;
      } else if (v_is_k && !f32 && !bf16dot) {
        vrow[j] = krow[j];  // MLA: the latent is both key and value
      } else {
        const char* vr = row_ptr(a.v, kt, b, kv0, j0 + j);
        if (f32) {
          vrow[j] = reinterpret_cast<const float*>(vr);
        } else {
          row_to_f32(Vf + j * Dvp, vr, kt, Dv);
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
