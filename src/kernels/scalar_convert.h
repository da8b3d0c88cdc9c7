#pragma once
// Scalar bf16/f16 <-> f32 conversions and element access, and the constants the SIMD headers share. Internal
// linkage on purpose: this header is also compiled with -mavx512* and -mavx2, and a shared inline copy could
// end up in code run on CPUs without them.
#include <cstdint>
#include <cstring>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {
namespace {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept NaN, as torch does.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400u));
      u = sign | ((127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;            // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;           // overflow (incl. rounding up) -> inf
  if (u < 0x38800000u) {                                 // subnormal or zero in f16
    if (u < 0x33000000u) return sign;                    // below half the smallest subnormal
    const uint32_t exp = u >> 23, man = (u & 0x7fffffu) | 0x800000u;
    const uint32_t drop = 126 - exp;                     // value = man * 2^(exp-150), unit 2^-24
    uint32_t r = man >> drop;
    const uint32_t rem = man & ((1u << drop) - 1), half = 1u << (drop - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = u + 0xfffu + ((u >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  r -= (127 - 15) << 23;
  return sign | static_cast<uint16_t>(r >> 13);
}

// OCP FP8 E4M3 (sign, 4 exponent bits of bias 7, 3 mantissa bits; exponent 0 subnormal; 0x7f and 0xff NaN, no
// infinities; max 448) as f32, exactly.
inline float e4m3_to_f32(uint8_t c) {
  const int e = (c >> 3) & 0xf, m = c & 7;
  float v;
  if ((c & 0x7f) == 0x7f) {
    uint32_t nan = 0x7fc00000u;
    std::memcpy(&v, &nan, 4);
    return v;
  }
  if (e == 0) {
    v = static_cast<float>(m) * (1.f / 512.f);  // m/8 · 2^-6
  } else {
    const uint32_t p = static_cast<uint32_t>(e - 10 + 127) << 23;  // 2^(e-7) / 8
    float unit;
    std::memcpy(&unit, &p, 4);
    v = static_cast<float>(8 + m) * unit;
  }
  return c & 0x80 ? -v : v;
}

// x rounded to storage type t and read back as f32 (what storing it and loading it again gives).
inline float round_to_storage(float x, DType t) {
  return t == DType::F32 ? x : t == DType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x));
}

inline float load_elem(const void* p, int64_t i, DType t) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.f;
}

inline void store_elem(void* p, int64_t i, DType t, float x) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = x; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(x); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(x); break;
  }
}

// Taylor series of 2^f = e^(f ln2) to degree 7, highest power first: error < 1e-8 on [-0.5, 0.5]. Shared by the
// SIMD exp2 of every instruction set (simd_avx512.h, simd_avx2.h).
constexpr float kExp2Taylor[8] = {1.5252733804059840e-5f, 1.5403530393381610e-4f, 1.3333558146428443e-3f,
                                  9.6181291076284772e-3f, 5.5504108664821580e-2f, 2.4022650695910071e-1f,
                                  6.9314718055994531e-1f, 1.f};

inline int64_t elem_size(DType t) { return t == DType::F32 ? 4 : 2; }

// Address of row r of head h of batch b of an operand.
inline const char* row_ptr(const Operand& o, DType t, int64_t b, int64_t h, int64_t r) {
  return static_cast<const char*>(o.p) + (b * o.sb + h * o.sh + r * o.sr) * elem_size(t);
}

// Element d of slot s of head h of batch b of a quantized cache, as f32.
inline float quant_elem(const QuantDesc& q, DType t, int64_t b, int64_t h, int64_t s, int64_t d) {
  if (s >= q.n_quant) return load_elem(row_ptr(q.residual, t, b, h, s - q.n_quant), d, t);
  const uint8_t* row = q.data + b * q.d_sb + h * q.d_sh + s * q.d_sr;
  const int64_t si = b * q.s_sb + h * q.s_sh + (q.per_channel ? (s / q.group) * q.s_sr + d : s * q.s_sr + d / q.group);
  if (q.codes == Codes::E4M3) return e4m3_to_f32(row[d]) * q.scale32[si];
  const int per_byte = 8 / q.bits;
  const int code = (row[d / per_byte] >> ((d % per_byte) * q.bits)) & ((1 << q.bits) - 1);
  return static_cast<float>(code) * f16_to_f32(q.scale[si]) + f16_to_f32(q.zero[si]);
}

}  // namespace
}  // namespace mha2mla::kernels
