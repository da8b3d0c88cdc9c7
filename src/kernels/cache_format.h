#pragma once
// The cache-format table: every way the decoding cache can store a token's values, described once. The cache
// (model/kv_cache), its accounting, `inspect`, the CLI help and the kernels' row loaders read it; adding a format
// is a row here, its quantizer (model/quant) and its row loaders (the Codes it names). Libtorch-free.
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention_args.h"

namespace mha2mla::kernels {

enum class CacheType { F32, BF16, F16, Int8, Int4, Int2, Fp8, Fp8FlashMla };

// What a stored value is: a float as computed (stored in `dtype`), an unsigned integer code with an f16 scale and
// zero point per group (asymmetric), or an FP8 E4M3 code with an f32 scale per group (symmetric).
enum class ValueKind { Float, Int, Fp8 };

// Which buffers a format stores: any, or the MLA cache only (the latent c and the rotary keys k_r).
enum class Buffers { Any, MlaOnly };

struct CacheFormat {
  CacheType type;
  const char* name;      // as --cache-type spells it
  const char* alias;     // a second spelling, or ""
  ValueKind kind;
  int bits;              // per value as stored
  DType dtype;           // Float: the storage dtype
  Codes codes;           // Int, Fp8: how the kernels read a row (attention_args.h)
  int scale_bytes;       // per group: the scale (f16 for Int, f32 for Fp8), 0 for Float
  int zero_bytes;        // per group: the zero point (f16 for Int), 0 otherwise
  int64_t group;         // values per group fixed by the format, 0: --cache-group decides
  Buffers buffers;
  CacheType rotary;      // how the rotary keys k_r are stored under this type (itself unless the format says)
  const char* summary;   // one line for --help and the docs
};

const std::vector<CacheFormat>& cache_formats();  // in CacheType order
const CacheFormat& cache_format(CacheType t);
const CacheFormat* find_cache_format(const std::string& name);  // by name or alias; nullptr when unknown
std::string cache_format_names();  // "f32, bf16, ..." for messages

inline bool is_quantized(CacheType t) { return cache_format(t).kind != ValueKind::Float; }

// Bytes of one token's row of `width` values as codes (Int, Fp8) or floats.
int64_t row_bytes(const CacheFormat& f, int64_t width);
// Scale groups in one token's row, quantized per token (the last group may be shorter).
inline int64_t token_groups(int64_t width, int64_t group) { return (width + group - 1) / group; }
// Bytes one token of a [heads, width] buffer costs in format f, scales and zero points included: per token,
// ceil(width / group) groups of the row; per channel, width groups shared by `group` tokens.
double bytes_per_token(const CacheFormat& f, int64_t heads, int64_t width, int64_t group, bool per_channel);

// An E4M3 code's value, exactly (NaN for 0x7f and 0xff), and the largest finite value.
float e4m3_value(uint8_t code);
constexpr float kE4M3Max = 448.f;

}  // namespace mha2mla::kernels
