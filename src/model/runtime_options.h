#pragma once
// How a model runs: device, compute dtype, cache storage and attention path. Built once from the command's
// flags (cli/runtime_flags.h) and passed to loading, cache creation, generate, ppl, calibrate, train, eval.
#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>

#include "kernels/cache_format.h"

namespace mha2mla::model {

// Storage of cached tokens: one row of the cache-format table (kernels/cache_format.h).
using kernels::CacheType;

// Which values share a scale: KIVI quantizes keys per channel (groups of G tokens of one channel) and
// values per token (groups of G channels of one token).
enum class QuantAxis { Token, Channel };

// How an integer cache type picks each group's zero point (the scale is min-max either way): minmax, the group's
// minimum; hqq, Half-Quadratic Quantization's zero, fitted by half-quadratic splitting under an lp error
// (p = 0.7), robust to the few outliers that min-max spends its range on. Decoding reads the same layout.
enum class QuantMethod { MinMax, Hqq };

// absorbed: MLA scores against the cached latent directly (K and V never materialised);
// materialize: rebuild K/V from the latent (the reference path); auto: absorbed when it does less work.
enum class AttnMode { Auto, Absorbed, Materialize };

// How a decode step of one sequence runs: fused (one parallel region over the layer stack, model/decode_step.h,
// where it applies) or layers (the modules, op by op, as every other step runs).
enum class DecodeStepMode { Fused, Layers };

struct CacheOptions {
  std::optional<CacheType> type;  // unset: the compute dtype
  // Per-buffer overrides by buffer name ("k", "v", "c", "k_r"): storage type and quantization axis.
  std::map<std::string, CacheType> type_of;
  std::map<std::string, QuantAxis> axis_of;
  int64_t residual = 128;  // most recent tokens kept in the compute dtype (integer types only)
  int64_t group = 64;      // values per scale/zero-point group
  QuantMethod quant = QuantMethod::MinMax;
};

struct RuntimeOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;  // weights and compute
  CacheOptions cache;
  AttnMode attn = AttnMode::Auto;
  // Attention through the libtorch reference (explicit mask, T×S scores) instead of the fused kernels
  // (src/kernels): the baseline that benchmarks compare against. Training always uses the reference.
  bool reference_attention = false;
  DecodeStepMode decode_step = DecodeStepMode::Fused;
};

// Names as the flags spell them; parse_* fail with a clear message naming the accepted values.
CacheType parse_cache_type(const std::string& s);
std::string cache_type_name(CacheType t);
using kernels::is_quantized;
QuantAxis parse_quant_axis(const std::string& s);
std::string quant_axis_name(QuantAxis a);
QuantMethod parse_quant_method(const std::string& s);
std::string quant_method_name(QuantMethod m);
AttnMode parse_attn_mode(const std::string& s);
std::string attn_mode_name(AttnMode a);
torch::Device parse_device(const std::string& s);  // cpu | cuda | cuda:N, checked against what is present
// "f32" | "bf16" | "f16" (and long forms) -> scalar type.
torch::ScalarType parse_compute_dtype(const std::string& s);

}  // namespace mha2mla::model
