#pragma once
// The runtime rows shared by every command that runs a model: --device, --kernels, --dtype, and for the
// commands that decode through a cache --cache-type, --cache-residual, --cache-group, --cache-axis,
// --cache-quant and --attn.
#include <nlohmann/json.hpp>

#include "cli/options.h"
#include "model/runtime_options.h"

namespace mha2mla::cli {

enum RuntimeParts : unsigned {
  kDevice = 1,  // --device, --kernels
  kDtype = 2,
  kCacheType = 4,    // --cache-type, --cache-type-kr
  kCacheQuant = 16,  // how integer types store: --cache-residual, --cache-group, --cache-axis, --cache-quant
  kCache = kCacheType | kCacheQuant,
  kAttn = 8,
  kAllRuntime = kDevice | kDtype | kCache | kAttn,
};

// Adds the rows; `rt` holds the defaults shown and receives the values. Cross-option checks (a residual
// that is no multiple of the group for a per-channel axis, ...) happen where the cache is built.
void add_runtime_options(OptionTable& t, model::RuntimeOptions& rt, unsigned parts);

// A compute dtype as --dtype spells it: f32, bf16 or f16.
std::string dtype_flag_name(torch::ScalarType t);

// The runtime as JSON ({device, dtype, cache_type, ..., kernels: the CPU variant in effect}), for the
// commands' --json reports.
nlohmann::json runtime_json(const model::RuntimeOptions& rt);

}  // namespace mha2mla::cli
