#pragma once
// AVX-512 helpers for the kernel files compiled with -mavx512*. Internal linkage only (see
// attention_args.h for why): include this from those files alone.
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__)
#error "simd_avx512.h needs -mavx512f -mavx512bw -mavx512vl -mavx512dq"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/attention_args.h"
#include "kernels/scalar_convert.h"

namespace mha2mla::kernels {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

// 2^x, exact 0 for x < -126 (and -inf); relative error ~1e-7 on the rest.
inline __m512 exp2_ps(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.f));
  x = _mm512_min_ps(x, _mm512_set1_ps(127.f));
  const __m512 xi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, xi);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2Taylor[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Taylor[i]));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, xi));
}

// 16 elements (n <= 16 valid, the rest read as 0) of storage type t as f32.
inline __m512 load16(const void* p, DType t, __mmask16 m = 0xffff) {
  switch (t) {
    case DType::F32: return _mm512_maskz_loadu_ps(m, p);
    case DType::BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    case DType::F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  return _mm512_setzero_ps();
}

// f32 -> bf16 with round to nearest even (NaN inputs are not expected here).
inline __m256i f32_to_bf16_16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

inline void store16(void* p, DType t, __m512 x, __mmask16 m = 0xffff) {
  switch (t) {
    case DType::F32: _mm512_mask_storeu_ps(p, m, x); break;
    case DType::BF16: _mm256_mask_storeu_epi16(p, m, f32_to_bf16_16(x)); break;
    case DType::F16:
      _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
  }
}

// Converts a row of n elements to f32 (zero-padded to a multiple of 16).
inline void row_to_f32(float* dst, const void* src, DType t, int64_t n) {
  const int64_t es = t == DType::F32 ? 4 : 2;
  for (int64_t i = 0; i < n; i += 16)
    _mm512_storeu_ps(dst + i, load16(static_cast<const char*>(src) + i * es, t, tail_mask(n - i)));
}

// Values i0..i0+15 (i0 a multiple of 16; n of them valid) of a row of packed `bits`-bit codes (value i
// in byte i / (8 / bits) at bit (i % (8 / bits)) * bits), as f32.
inline __m512 unpack16(const uint8_t* row, int bits, int64_t i0, int64_t n) {
  const int64_t nbytes = ((n < 16 ? n : 16) * bits + 7) / 8;
  const __m128i raw = _mm_maskz_loadu_epi8(tail_mask(nbytes), row + i0 * bits / 8);
  if (bits == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(raw));
  __m128i idx;
  __m512i shift;
  if (bits == 4) {
    idx = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
  } else {  // 2 bits
    idx = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    shift = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
  }
  const __m512i w = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_shuffle_epi8(raw, idx)), shift);
  return _mm512_cvtepi32_ps(_mm512_and_si512(w, _mm512_set1_epi32((1 << bits) - 1)));
}

inline __m512 load_f16x16(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

// 16 E4M3 codes (the first n valid, the rest 0) as f32 divided by 256: each byte's magnitude bits become an f16's
// exponent and mantissa (the formats differ in exponent width and bias, a factor 2^8 here), so vcvtph2ps converts
// subnormal codes exactly. The caller multiplies the scale by 256, which keeps every product exact.
inline __m512 e4m3x16_over256(const uint8_t* p, int64_t n) {
  const __m256i b = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8(tail_mask(n), p));
  const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                    _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7));
  return _mm512_cvtph_ps(h);
}

// An E4M3 row (see dequant_row): e4m3(code) * scale, the f32 scales per channel or per group of the row.
inline void dequant_row_e4m3(float* dst, const QuantDesc& q, const uint8_t* row, int64_t base, int64_t s, int64_t D,
                             const int32_t* group_of) {
  const __m512 k256 = _mm512_set1_ps(256.f);
  if (q.per_channel) {
    const float* sc = q.scale32 + base + (s / q.group) * q.s_sr;
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 mk = tail_mask(D - i);
      const __m512 sv = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, sc + i), k256);
      _mm512_storeu_ps(dst + i, _mm512_maskz_mul_ps(mk, e4m3x16_over256(row + i, D - i), sv));
    }
    return;
  }
  const float* sc = q.scale32 + base + s * q.s_sr;
  const int64_t ngroups = (D + q.group - 1) / q.group;
  const __m512 sv = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(ngroups), sc), k256);
  for (int64_t i = 0; i < D; i += 16) {
    const __mmask16 mk = tail_mask(D - i);
    const __m512i gi = _mm512_maskz_loadu_epi32(mk, group_of + i);
    const __m512 si = ngroups <= 16 ? _mm512_permutexvar_ps(gi, sv)  // all of the row's scales in one register
                                    : _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, gi, sc, 4), k256);
    _mm512_storeu_ps(dst + i, _mm512_maskz_mul_ps(mk, e4m3x16_over256(row + i, D - i), si));
  }
}

// Slot s of head h of a quantized cache as D f32 values (zero-padded to a multiple of 16).
// group_of[i] = i / group (per-token groups; the caller fills it once).
inline void dequant_row(float* dst, const QuantDesc& q, DType t, int64_t b, int64_t h, int64_t s, int64_t D,
                        const int32_t* group_of) {
  if (s >= q.n_quant) {
    row_to_f32(dst, row_ptr(q.residual, t, b, h, s - q.n_quant), t, D);
    return;
  }
  const uint8_t* row = q.data + b * q.d_sb + h * q.d_sh + s * q.d_sr;
  const int64_t base = b * q.s_sb + h * q.s_sh;
  if (q.codes == Codes::E4M3) return dequant_row_e4m3(dst, q, row, base, s, D, group_of);
  if (q.per_channel) {  // scale/zero rows [D] of the slot's group of tokens
    const uint16_t* sc = q.scale + base + (s / q.group) * q.s_sr;
    const uint16_t* zr = q.zero + base + (s / q.group) * q.s_sr;
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 mk = tail_mask(D - i);
      _mm512_storeu_ps(dst + i, _mm512_maskz_mov_ps(mk, _mm512_fmadd_ps(unpack16(row, q.bits, i, D - i),
                                                                        load_f16x16(sc + i, mk), load_f16x16(zr + i, mk))));
    }
    return;
  }
  const uint16_t* sc = q.scale + base + s * q.s_sr;
  const uint16_t* zr = q.zero + base + s * q.s_sr;
  const int64_t ngroups = (D + q.group - 1) / q.group;
  if (ngroups <= 16) {  // all of the row's scales in one register, spread by a permute
    const __mmask16 gm = tail_mask(ngroups);
    const __m512 sv = load_f16x16(sc, gm), zv = load_f16x16(zr, gm);
    for (int64_t i = 0; i < D; i += 16) {
      const __mmask16 mk = tail_mask(D - i);
      const __m512i gi = _mm512_maskz_loadu_epi32(mk, group_of + i);
      _mm512_storeu_ps(dst + i, _mm512_maskz_mov_ps(mk, _mm512_fmadd_ps(unpack16(row, q.bits, i, D - i),
                                                                        _mm512_permutexvar_ps(gi, sv),
                                                                        _mm512_permutexvar_ps(gi, zv))));
    }
    return;
  }
  for (int64_t i = 0; i < D; i += 16) {  // many small groups: per-lane gather of the scales
    const __mmask16 mk = tail_mask(D - i);
    const __m512i gi = _mm512_maskz_loadu_epi32(mk, group_of + i);
    alignas(64) float sv[16], zv[16];
    alignas(64) int32_t g[16];
    _mm512_store_si512(g, gi);
    for (int l = 0; l < 16; ++l) {
      sv[l] = f16_to_f32(sc[g[l]]);
      zv[l] = f16_to_f32(zr[g[l]]);
    }
    _mm512_storeu_ps(dst + i, _mm512_maskz_mov_ps(mk, _mm512_fmadd_ps(unpack16(row, q.bits, i, D - i),
                                                                      _mm512_load_ps(sv), _mm512_load_ps(zv))));
  }
}

// Scratch memory owned by one work item; 64-byte aligned pieces carved from one allocation.
class Scratch {
 public:
  explicit Scratch(int64_t bytes) : base_(static_cast<char*>(std::aligned_alloc(64, round_up(bytes, 64)))) {}
  ~Scratch() { std::free(base_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += round_up(n * static_cast<int64_t>(sizeof(T)), 64);
    return p;
  }
  bool ok() const { return base_ != nullptr; }

 private:
  char* base_;
  int64_t used_ = 0;
};

}  // namespace
}  // namespace mha2mla::kernels
