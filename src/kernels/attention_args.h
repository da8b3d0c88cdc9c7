#pragma once
// Plain-pointer description of one attention call, shared by the libtorch front end (attention.cpp)
// and the instruction-set specific files, which include no libtorch header: they are compiled with
// -mavx512*, and an inline libtorch function instantiated there could be picked by the linker for
// code that runs on CPUs without AVX-512.
#include <cstdint>

namespace mha2mla::kernels {

enum class DType : int { F32, BF16, F16 };

// How a quantized cache's codes read back (kernels/cache_format.h names the formats that use each):
//   Uint: `bits`-bit unsigned codes packed low bits first, x = code * scale + zero (f16 scale and zero);
//   E4M3: one byte per value, OCP FP8 E4M3 (bias 7, max 448, no infinities), x = e4m3(code) * scale (f32 scale,
//         no zero point).
enum class Codes : int { Uint, E4M3 };

// A [B, H, rows, dim] operand, last dim contiguous; strides in elements.
struct Operand {
  const void* p = nullptr;
  int64_t sb = 0, sh = 0, sr = 0;  // sh = 0 shares one head between all heads (MLA latent)
};

// A quantized K or V cache (layout in kernels/quant_attention.h): slots [0, n_quant) are stored as codes with
// their scales (and zero points), slots [n_quant, S) in `residual` (AttnArgs::kv_dtype).
struct QuantDesc {
  Codes codes = Codes::Uint;
  const uint8_t* data = nullptr;  // [B, H, >= n_quant, row_bytes]
  int64_t d_sb = 0, d_sh = 0, d_sr = 0;
  // Uint: f16 scale and zero; per token [B, H, >= n_quant, ceil(D/group)], per channel [B, H, n_quant/group, D].
  const uint16_t* scale = nullptr;
  const uint16_t* zero = nullptr;
  const float* scale32 = nullptr;        // E4M3: f32 scales in the same layout (scale and zero unset)
  int64_t s_sb = 0, s_sh = 0, s_sr = 0;  // strides of the scales and zeros (same layout)
  int bits = 8;                          // Uint: 2, 4 or 8; E4M3: 8
  int64_t group = 0;
  bool per_channel = false;
  int64_t n_quant = 0;
  Operand residual;  // [B, H, S - n_quant, D]
};
// A buffer with one head shared by every query head (the MLA latent) has d_sh = s_sh = residual.sh = 0.

// score(query row t of head h, key slot s) = (q1·k1 + q2·k2) * scale; out = softmax-weighted sum of v.
// Key slot s is visible to query t iff s <= start+t, (window <= 0 or s > start+t-window) and
// valid[b, s] (when given). A query row that sees no key gets zeros.
struct AttnArgs {
  DType dtype = DType::F32;        // q1, q2 and out: the compute dtype
  DType kv_dtype = DType::F32;     // k1, k2, v and the QuantDesc residuals: the cache's float storage (a bf16 or
                                   // f16 cache under f32 compute is read where it lies and widened in registers)
  int64_t B = 0, Hq = 0, Hkv = 0;  // Hkv: heads of k1/k2/v (k1/v may have sh = 0); head h uses h / (Hq/Hkv)
  int64_t groups = 0;              // work items per batch row: Hkv for GQA, 1 for MLA (all heads share c)
  int64_t T = 0, S = 0;
  int64_t D1 = 0, D2 = 0, Dv = 0;  // D2 = 0: no second score term
  int64_t start = 0, window = 0;
  float scale = 1.f;
  Operand q1, q2, k1, k2, v;       // q [B, Hq, T, D], k/v [B, Hkv, S, D]
  const bool* valid = nullptr;     // [B, S] contiguous, or null (all valid)
  void* out = nullptr;             // [B, Hq, T, Dv] contiguous
  const QuantDesc* kq = nullptr;   // when set, k1 / v are read from these (decode only)
  const QuantDesc* vq = nullptr;
  const QuantDesc* k2q = nullptr;  // when set, k2 is read from it (decode only)
};

// Partial result of one split of the key axis, for `rows` = g*T query rows of one (batch, KV head):
// per row the running max m (log2 domain), the sum l, and the unnormalised accumulator acc[Dv].
// Rows are ordered head-major: row = (h - first head of the group) * T + t.
struct Partial {
  float* m;    // [rows]
  float* l;    // [rows]
  float* acc;  // [rows, Dv]
};

// Which key slots a query at slot `pos` of batch row b sees, as [lo, hi) before validity.
inline void visible_range(const AttnArgs& a, int64_t pos, int64_t* lo, int64_t* hi) {
  int64_t h = pos + 1 < a.S ? pos + 1 : a.S;
  int64_t l = a.window > 0 ? pos - a.window + 1 : 0;
  *lo = l < 0 ? 0 : l;
  *hi = h;
}

// Whether q and the cache are both bf16 (the vdpbf16ps paths score and sum pairs as stored).
inline bool all_bf16(const AttnArgs& a) { return a.dtype == DType::BF16 && a.kv_dtype == DType::BF16; }

// Whether the value rows are the key rows (MLA: the latent is key and value, converted once per block).
inline bool values_are_keys(const AttnArgs& a) {
  return a.Dv == a.D1 && (a.kq ? a.vq == a.kq
                               : !a.vq && a.v.p == a.k1.p && a.v.sb == a.k1.sb && a.v.sh == a.k1.sh &&
                                     a.v.sr == a.k1.sr);
}

// One implementation variant. Each entry runs a piece of work; the front end owns the threads.
struct AttnKernels {
  // Prefill: query rows t in [t0, t0+tq) of all g heads of KV head kvh, over every visible key; writes out.
  void (*prefill_tile)(const AttnArgs&, int64_t b, int64_t kvh, int64_t t0, int64_t tq);
  // Decode: all T query rows of the Hq/groups heads of group grp against keys [s0, s1); writes a Partial.
  void (*decode_split)(const AttnArgs&, int64_t b, int64_t grp, int64_t s0, int64_t s1, const Partial&);
};

namespace generic { extern const AttnKernels kAttn; }
namespace avx512 { extern const AttnKernels kAttnF32; }    // f32 math, any storage dtype
namespace avx512bf16 { extern const AttnKernels kAttn; }   // vdpbf16ps for bf16 storage
namespace avx2 { extern const AttnKernels kAttn; }         // f32 math, any storage dtype

}  // namespace mha2mla::kernels
