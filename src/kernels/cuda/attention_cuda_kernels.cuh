#pragma once
// The CUDA attention kernels' device code and their plan, apart from the launches (attention_cuda.cu): the bodies
// read threadIdx/blockIdx and call __syncthreads and warp shuffles only, so tests/kernels/cuda_emulator.h can run
// them thread block by thread block on a CPU, in CI, against the reference. Read by nvcc or by that emulator,
// which provide the CUDA built-ins and the 16-bit types.
//
// One thread block takes a block of query rows of one (batch, group) and one split of the keys, 32 keys per tile:
//   1. the tile's keys (and values, unless they are the keys: the MLA latent) are converted to f32 in shared
//      memory, rows padded by one float so that a warp reading 32 keys' element d hits 32 banks;
//   2. scores: one thread per (row, key), the query rows in shared memory, scaled into the log2 domain;
//   3. online softmax: one warp per row, lane j holding key j; the row's running max and sum stay in shared
//      memory, and `alpha` rescales what the row has summed so far;
//   4. P·V: each thread owns up to kMaxAcc (row, channel) accumulators in registers.
// Each split writes its rows' (max, sum, accumulator) in the CPU kernels' layout (DecodeSplits), and a second
// kernel merges the splits of every row into the output. Masking follows kernels/attention.h. A prefill is the
// same kernel with every prompt token as a query row.
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/attention_cuda.h"

#ifndef MHA2MLA_UNROLL
#define MHA2MLA_UNROLL _Pragma("unroll")
#endif

namespace mha2mla::kernels::cuda {

constexpr int kTile = 32;      // keys per tile: one per lane in the softmax
constexpr int kThreads = 256;  // threads per block
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % kTile == 0, "each score's thread must be a lane of the warp that takes its row");
constexpr int kMaxAcc = 32;    // accumulators per thread, so rows per block * Dv <= kThreads * kMaxAcc
constexpr float kLog2e = 1.4426950408889634f;

template <class T> __device__ inline float to_f(T x);
template <> __device__ inline float to_f<float>(float x) { return x; }
template <> __device__ inline float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> __device__ inline float to_f<__half>(__half x) { return __half2float(x); }

template <class T> __device__ inline T from_f(float x);
template <> __device__ inline float from_f<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ inline __half from_f<__half>(float x) { return __float2half(x); }

// The quantized buffers of a call by value, for the kernel's parameters (AttnArgs points to host copies).
struct QuantSet {
  QuantDesc k1, v, k2;
  bool has_k1 = false, has_v = false, has_k2 = false;
};
inline QuantSet quant_set(const AttnArgs& a) {
  QuantSet q;
  if (a.kq) q.k1 = *a.kq, q.has_k1 = true;
  if (a.vq) q.v = *a.vq, q.has_v = true;
  if (a.k2q) q.k2 = *a.k2q, q.has_k2 = true;
  return q;
}

__device__ inline float f16_bits_to_f(uint16_t x) { return __half2float(__ushort_as_half(x)); }

// An E4M3 code as f32: its magnitude bits moved into an f16's exponent and mantissa (the formats differ in exponent
// width and bias, a factor 2^8), so subnormal codes convert exactly. Codes never hold the NaN pattern (0x7f).
__device__ inline float e4m3_to_f(uint8_t c) {
  return f16_bits_to_f(static_cast<uint16_t>(((c & 0x80) << 8) | ((c & 0x7f) << 7))) * 256.f;
}

// Element d of slot s of head h of batch b: from the plain operand o, or, when `quant`, from the codes of q
// (slots below n_quant) or its residual (layout in kernels/quant_attention.h).
template <class T>
__device__ inline float kv_elem(const Operand& o, const QuantDesc& q, bool quant, int64_t b, int64_t h, int64_t s,
                                int64_t d) {
  if (!quant) return to_f(static_cast<const T*>(o.p)[b * o.sb + h * o.sh + s * o.sr + d]);
  if (s >= q.n_quant) {
    const Operand& r = q.residual;
    return to_f(static_cast<const T*>(r.p)[b * r.sb + h * r.sh + (s - q.n_quant) * r.sr + d]);
  }
  const uint8_t* row = q.data + b * q.d_sb + h * q.d_sh + s * q.d_sr;
  const int64_t si =
      b * q.s_sb + h * q.s_sh + (q.per_channel ? (s / q.group) * q.s_sr + d : s * q.s_sr + d / q.group);
  if (q.codes == Codes::E4M3) return e4m3_to_f(row[d]) * q.scale32[si];
  const int per_byte = 8 / q.bits;
  const int code = (row[d / per_byte] >> ((d % per_byte) * q.bits)) & ((1 << q.bits) - 1);
  return static_cast<float>(code) * f16_bits_to_f(q.scale[si]) + f16_bits_to_f(q.zero[si]);
}

// Shared memory of a block, in floats: Q1 [nr][D1], Q2 [nr][D2], K1 [32][D1+1], K2 [nkv2][32][D2+1],
// V [32][Dv+1] (absent when the values are the keys), P [nr][32], then M, L and alpha [nr] each.
__host__ __device__ inline int64_t smem_floats(const AttnArgs& a, int64_t nr, int64_t nkv2, bool v_is_k) {
  return nr * (a.D1 + a.D2) + kTile * (a.D1 + 1) + nkv2 * kTile * (a.D2 + 1) + (v_is_k ? 0 : kTile * (a.Dv + 1)) +
         nr * kTile + 3 * nr;
}

// KV heads [*kv_first, *kv_first + return) of k2 for rows [r0, r0 + nr) of group grp.
__host__ __device__ inline int64_t rope_heads(const AttnArgs& a, int64_t grp, int64_t r0, int64_t nr,
                                              int64_t* kv_first) {
  const int64_t g = a.Hq / a.groups, per_kv = a.Hq / a.Hkv, h0 = grp * g;
  const int64_t first = (h0 + r0 / a.T) / per_kv, last = (h0 + (r0 + nr - 1) / a.T) / per_kv;
  *kv_first = first;
  return a.D2 ? last - first + 1 : 0;
}

__host__ __device__ inline int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }
__host__ __device__ inline int64_t imax(int64_t x, int64_t y) { return x > y ? x : y; }

__device__ inline float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ inline float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Rows [r0, r0 + nr) of `rows` per (batch, group) x keys of one split -> their partial softmax. The body of
// one thread of the block (blockIdx.x: split, .y: row block, .z: batch * groups); sm: the block's shared memory.
template <class T>
__device__ void decode_split_block(const AttnArgs& a, const QuantSet& qs, const DecodePlan& p, float* part,
                                   float* sm) {
  const int64_t sp = blockIdx.x, bg = blockIdx.z;
  const int64_t b = bg / a.groups, grp = bg % a.groups;
  const int64_t g = a.Hq / a.groups, per_kv = a.Hq / a.Hkv, h0 = grp * g;
  const int64_t r0 = blockIdx.y * p.row_block, nr = imin(p.row_block, p.rows - r0);
  // The split's keys, clipped to those the block's rows can see: rows are (head, token) head-major, so a block
  // of fewer than T rows holds one run of tokens unless it wraps into the next head. In a prefill, blocks of
  // early tokens so skip the keys after them.
  int64_t t_lo = 0, t_hi = a.T - 1;
  if (nr < a.T && r0 % a.T <= (r0 + nr - 1) % a.T) t_lo = r0 % a.T, t_hi = (r0 + nr - 1) % a.T;
  const int64_t split0 = p.lo + sp * p.chunk;
  const int64_t s0 = a.window > 0 ? imax(split0, a.start + t_lo - a.window + 1) : split0;
  const int64_t s1 = imin(imin(p.hi, split0 + p.chunk), a.start + t_hi + 1);
  const int64_t kv1 = h0 / per_kv;  // the K1/V head (MLA: shared, sh = 0)
  int64_t kv2_first = 0;
  const int64_t nkv2 = rope_heads(a, grp, r0, nr, &kv2_first);
  const int D1 = static_cast<int>(a.D1), D2 = static_cast<int>(a.D2), Dv = static_cast<int>(a.Dv);
  const int ld1 = D1 + 1, ld2 = D2 + 1;
  const bool v_is_k = p.v_is_k;
  const int ldv = v_is_k ? ld1 : Dv + 1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  float* Q1 = sm;
  float* Q2 = Q1 + nr * D1;
  float* K1 = Q2 + nr * D2;
  float* K2 = K1 + kTile * ld1;
  float* Vt = K2 + nkv2 * kTile * ld2;
  float* P = Vt + (v_is_k ? 0 : kTile * (Dv + 1));
  float* M = P + nr * kTile;
  float* L = M + nr;
  float* Al = L + nr;
  const float* V = v_is_k ? K1 : Vt;

  const T* q1 = static_cast<const T*>(a.q1.p);
  const T* q2 = static_cast<const T*>(a.q2.p);
  const float c = a.scale * kLog2e;
  for (int64_t i = tid; i < nr * D1; i += kThreads) {
    const int64_t r = r0 + i / D1, h = h0 + r / a.T, t = r % a.T;
    Q1[i] = to_f(q1[b * a.q1.sb + h * a.q1.sh + t * a.q1.sr + i % D1]) * c;
  }
  for (int64_t i = tid; i < nr * D2; i += kThreads) {
    const int64_t r = r0 + i / D2, h = h0 + r / a.T, t = r % a.T;
    Q2[i] = to_f(q2[b * a.q2.sb + h * a.q2.sh + t * a.q2.sr + i % D2]) * c;
  }
  for (int64_t r = tid; r < nr; r += kThreads) M[r] = -INFINITY, L[r] = 0.f;
  const int64_t nacc = (nr * Dv + kThreads - 1) / kThreads;
  float acc[kMaxAcc];
MHA2MLA_UNROLL
  for (int k = 0; k < kMaxAcc; ++k) acc[k] = 0.f;

  for (int64_t j0 = s0; j0 < s1; j0 += kTile) {
    const int nb = static_cast<int>(imin(kTile, s1 - j0));
    __syncthreads();  // the previous tile's P·V has read K1/V and P
    for (int i = tid; i < kTile * D1; i += kThreads) {
      const int j = i / D1, d = i % D1;
      K1[j * ld1 + d] = j < nb ? kv_elem<T>(a.k1, qs.k1, qs.has_k1, b, kv1, j0 + j, d) : 0.f;
    }
    for (int64_t kv = 0; kv < nkv2; ++kv)
      for (int i = tid; i < kTile * D2; i += kThreads) {
        const int j = i / D2, d = i % D2;
        K2[(kv * kTile + j) * ld2 + d] =
            j < nb ? kv_elem<T>(a.k2, qs.k2, qs.has_k2, b, kv2_first + kv, j0 + j, d) : 0.f;
      }
    if (!v_is_k)
      for (int i = tid; i < kTile * Dv; i += kThreads) {
        const int j = i / Dv, d = i % Dv;
        Vt[j * ldv + d] = j < nb ? kv_elem<T>(a.v, qs.v, qs.has_v, b, kv1, j0 + j, d) : 0.f;
      }
    __syncthreads();
    // Scores: a warp takes 32 keys of one row; key j's row is j * (D + 1) floats in, so the lanes hit distinct
    // banks, and the query value is one broadcast.
    for (int64_t i = tid; i < nr * kTile; i += kThreads) {
      const int64_t r = i / kTile;
      const int j = static_cast<int>(i % kTile);
      const float* qr = Q1 + r * D1;
      const float* kr = K1 + j * ld1;
      float s = 0.f;
      for (int d = 0; d < D1; ++d) s = fmaf(qr[d], kr[d], s);
      if (D2) {
        const int64_t kv = (h0 + (r0 + r) / a.T) / per_kv - kv2_first;
        const float* q = Q2 + r * D2;
        const float* k = K2 + (kv * kTile + j) * ld2;
        for (int d = 0; d < D2; ++d) s = fmaf(q[d], k[d], s);
      }
      P[i] = s;
    }
    // Online softmax, one warp per row. No barrier before it: score i = r * 32 + lane was computed by thread
    // i % kThreads, and row r goes to warp r % kWarps, so each lane reads the score it wrote itself.
    for (int64_t r = warp; r < nr; r += kWarps) {
      const int64_t pos = a.start + (r0 + r) % a.T;
      const int64_t lo = a.window > 0 ? imax(0, pos - a.window + 1) : 0, hi = imin(pos + 1, a.S);
      const int64_t slot = j0 + lane;
      const bool vis = lane < nb && slot >= lo && slot < hi && (!a.valid || a.valid[b * a.S + slot]);
      const float s = vis ? P[r * kTile + lane] : -INFINITY;
      const float m_old = M[r], m_new = fmaxf(m_old, warp_max(s));
      const float pj = vis ? exp2f(s - m_new) : 0.f;  // m_new is finite wherever some lane is visible
      const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
      const float sum = warp_sum(pj);
      P[r * kTile + lane] = pj;
      if (lane == 0) {  // every lane read M[r] and L[r] before the shuffles above
        M[r] = m_new;
        L[r] = L[r] * alpha + sum;
        Al[r] = alpha;
      }
    }
    __syncthreads();
    // Acc = Acc * alpha + P·V, each thread for its (row, channel) pairs.
MHA2MLA_UNROLL
    for (int k = 0; k < kMaxAcc; ++k) {
      const int64_t i = tid + static_cast<int64_t>(k) * kThreads;
      if (k >= nacc || i >= nr * Dv) break;
      const int64_t r = i / Dv;
      const int d = static_cast<int>(i % Dv);
      const float* pr = P + r * kTile;
      float o = acc[k] * Al[r];
      for (int j = 0; j < nb; ++j) o = fmaf(pr[j], V[j * ldv + d], o);
      acc[k] = o;
    }
  }
  // The split's partial in the layout of DecodeSplits: m [rows], l [rows], acc [rows][Dv]. M and L were last
  // written before the barrier that precedes the last P·V (or, with no key, by the thread that reads them).
  float* base = part + (bg * p.nsplit + sp) * p.rows * (a.Dv + 2);
  for (int64_t r = tid; r < nr; r += kThreads) base[r0 + r] = M[r], base[p.rows + r0 + r] = L[r];
MHA2MLA_UNROLL
  for (int k = 0; k < kMaxAcc; ++k) {
    const int64_t i = tid + static_cast<int64_t>(k) * kThreads;
    if (k >= nacc || i >= nr * Dv) break;
    base[2 * p.rows + r0 * Dv + i] = acc[k];
  }
}

// Row blockIdx.x of (batch, group) blockIdx.y: the splits' partials merged and normalised into out.
template <class T>
__device__ void merge_row(const AttnArgs& a, const DecodePlan& p, const float* part) {
  const int64_t r = blockIdx.x, bg = blockIdx.y, R = p.rows, stride = R * (a.Dv + 2);
  const float* base = part + bg * p.nsplit * stride;
  float M = -INFINITY;
  for (int64_t i = 0; i < p.nsplit; ++i) M = fmaxf(M, base[i * stride + r]);
  T* out = static_cast<T*>(a.out) + (bg * R + r) * a.Dv;
  for (int64_t d = threadIdx.x; d < a.Dv; d += blockDim.x) {
    float o = 0.f, L = 0.f;
    for (int64_t i = 0; i < p.nsplit && M != -INFINITY; ++i) {  // no visible key at all: zeros
      const float m = base[i * stride + r];
      if (m == -INFINITY) continue;
      const float w = exp2f(m - M);
      L += w * base[i * stride + R + r];
      o += w * base[i * stride + 2 * R + r * a.Dv + d];
    }
    out[d] = from_f<T>(L > 0.f ? o / L : 0.f);
  }
}

// Threads of the merge kernel's blocks (one block per query row).
inline int merge_threads(const AttnArgs& a) {
  return static_cast<int>(std::min<int64_t>(256, (a.Dv + 31) / 32 * 32));
}

// plan_decode for a device of `sms` multiprocessors and `smem_max` bytes of shared memory per block.
inline std::string plan_for(const AttnArgs& a, int64_t sms, int64_t smem_max, DecodePlan* out) {
  if (a.Dv > kThreads * kMaxAcc) return "value width above " + std::to_string(kThreads * kMaxAcc);
  if (a.kv_dtype != a.dtype) return "the cache is stored in another dtype than q";  // the kernels read one type
  DecodePlan p;
  p.rows = a.Hq / a.groups * a.T;
  p.row_block = std::max<int64_t>(1, std::min<int64_t>(p.rows, kThreads * kMaxAcc / std::max<int64_t>(a.Dv, 1)));
  p.row_blocks = (p.rows + p.row_block - 1) / p.row_block;
  if (p.row_blocks > 65535 || a.B * a.groups > 65535) return "more blocks than a grid's y and z dimensions hold";
  p.lo = a.window > 0 ? std::max<int64_t>(0, a.start - a.window + 1) : 0;
  p.hi = std::min(a.S, a.start + a.T);
  const int64_t span = std::max<int64_t>(p.hi - p.lo, 1);
  // Two blocks per multiprocessor, each split at least 128 keys long.
  const int64_t per_split = a.B * a.groups * p.row_blocks;
  int64_t nsplit = std::max<int64_t>(1, (2 * sms + per_split - 1) / per_split);
  nsplit = std::min(nsplit, std::max<int64_t>(1, span / 128));
  p.chunk = ((span + nsplit - 1) / nsplit + kTile - 1) / kTile * kTile;
  p.nsplit = (span + p.chunk - 1) / p.chunk;
  p.v_is_k = values_are_keys(a);
  const bool v_is_k = p.v_is_k;
  int64_t floats = 0;
  for (int64_t grp = 0; grp < a.groups; ++grp)
    for (int64_t rb = 0; rb < p.row_blocks; ++rb) {
      const int64_t r0 = rb * p.row_block, nr = std::min(p.row_block, p.rows - r0);
      int64_t first = 0;
      floats = std::max(floats, smem_floats(a, nr, rope_heads(a, grp, r0, nr, &first), v_is_k));
    }
  p.smem = static_cast<size_t>(floats) * sizeof(float);
  if (p.smem > static_cast<size_t>(smem_max))
    return "needs " + std::to_string(p.smem) + " bytes of shared memory per block, the device has " +
           std::to_string(smem_max);
  *out = p;
  return "";
}

}  // namespace mha2mla::kernels::cuda
