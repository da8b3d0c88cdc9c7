#include "kernels/cache_format.h"

#include "kernels/scalar_convert.h"

namespace mha2mla::kernels {

const std::vector<CacheFormat>& cache_formats() {
  using K = ValueKind;
  using T = CacheType;
  static const std::vector<CacheFormat> table = {
      {T::F32, "f32", "", K::Float, 32, DType::F32, Codes::Uint, 0, 0, 0, Buffers::Any, T::F32, "32-bit floats"},
      {T::BF16, "bf16", "", K::Float, 16, DType::BF16, Codes::Uint, 0, 0, 0, Buffers::Any, T::BF16, "bfloat16"},
      {T::F16, "f16", "", K::Float, 16, DType::F16, Codes::Uint, 0, 0, 0, Buffers::Any, T::F16, "IEEE half floats"},
      {T::Int8, "int8", "q8", K::Int, 8, DType::F32, Codes::Uint, 2, 2, 0, Buffers::Any, T::Int8,
       "8-bit codes, f16 scale and zero point per group"},
      {T::Int4, "int4", "q4", K::Int, 4, DType::F32, Codes::Uint, 2, 2, 0, Buffers::Any, T::Int4,
       "4-bit codes, f16 scale and zero point per group"},
      {T::Int2, "int2", "q2", K::Int, 2, DType::F32, Codes::Uint, 2, 2, 0, Buffers::Any, T::Int2,
       "2-bit codes, f16 scale and zero point per group"},
      {T::Fp8, "fp8", "e4m3", K::Fp8, 8, DType::F32, Codes::E4M3, 4, 0, 0, Buffers::Any, T::Fp8,
       "FP8 E4M3, f32 scale per group (a group >= the row: per token)"},
      {T::Fp8FlashMla, "fp8-flashmla", "", K::Fp8, 8, DType::F32, Codes::E4M3, 4, 0, 128, Buffers::MlaOnly, T::BF16,
       "MLA only: FlashMLA's E4M3 latent, f32 scale per 128 values, bf16 k_r"},
  };
  return table;
}

const CacheFormat& cache_format(CacheType t) { return cache_formats().at(static_cast<size_t>(t)); }

const CacheFormat* find_cache_format(const std::string& name) {
  for (const auto& f : cache_formats())
    if (name == f.name || (*f.alias && name == f.alias)) return &f;
  return nullptr;
}

std::string cache_format_names() {
  std::string s;
  for (const auto& f : cache_formats()) s += (s.empty() ? "" : ", ") + std::string(f.name);
  return s;
}

int64_t row_bytes(const CacheFormat& f, int64_t width) { return (width * f.bits + 7) / 8; }

double bytes_per_token(const CacheFormat& f, int64_t heads, int64_t width, int64_t group, bool per_channel) {
  const double meta_per_group = f.scale_bytes + f.zero_bytes;
  const double groups = f.kind == ValueKind::Float ? 0.0
                        : per_channel             ? static_cast<double>(width) / static_cast<double>(group)
                                                  : static_cast<double>(token_groups(width, group));
  return static_cast<double>(heads) * (static_cast<double>(row_bytes(f, width)) + meta_per_group * groups);
}

float e4m3_value(uint8_t code) { return e4m3_to_f32(code); }

}  // namespace mha2mla::kernels
