#include "cli/runtime_flags.h"

#include <sstream>

#include "io/safetensors.h"
#include "kernels/cache_format.h"
#include "kernels/cpu_features.h"
#include "model/execution_plan.h"
#include "util/error.h"

namespace mha2mla::cli {
namespace {

// --cache-type's help: a line per row of the cache-format table.
std::string cache_type_help() {
  std::string h = "KV cache storage (docs/serving.md):";
  for (const auto& f : kernels::cache_formats()) {
    std::string name = f.name;
    name.resize(std::max<size_t>(name.size() + 1, 13), ' ');
    h += "\n  " + name + f.summary;
  }
  return h;
}

}  // namespace

void add_runtime_options(OptionTable& t, model::RuntimeOptions& rt, unsigned parts) {
  if (parts & kDevice)
    t.value("device", "D", "cpu, cuda or cuda:N", [&rt](const std::string& v) { rt.device = model::parse_device(v); },
            rt.device.str());
  if (parts & kDevice)
    t.value("kernels", "V",
            "CPU kernels: auto (the best this CPU runs), avx512bf16, avx512, avx2, generic (portable\n"
            "loops) or reference (libtorch ops); a variant this CPU cannot run is an error;\n"
            "MHA2MLA_KERNELS sets the same",
            [](const std::string& v) {
              const auto variant = kernels::parse_variant(v);
              kernels::resolve_variant(variant);  // refuses what the CPU lacks
              kernels::set_variant_cap(variant);
            },
            "auto");
  if (parts & kDtype)
    t.value("dtype", "T", "weights and compute: f32, bf16 or f16",
            [&rt](const std::string& v) { rt.dtype = model::parse_compute_dtype(v); },
            dtype_flag_name(rt.dtype));
  if (parts & kCacheType) {
    t.value("cache-type", "T", cache_type_help(),
            [&rt](const std::string& v) { rt.cache.type = model::parse_cache_type(v); }, "the compute dtype");
    t.value("cache-type-kr", "T", "storage of an MLA model's RoPE keys k_r, e.g. bf16 beside an int4 latent",
            [&rt](const std::string& v) { rt.cache.type_of["k_r"] = model::parse_cache_type(v); }, "--cache-type");
  }
  if (parts & kCacheQuant) {
    t.integer("cache-residual", "N", "most recent tokens kept in the compute dtype by quantized cache types",
              rt.cache.residual, 0);
    t.integer("cache-group", "G", "values per quantization group", rt.cache.group, 1);
    t.value("cache-quant", "Q",
            "how integer cache types fit each group's zero point: minmax (the group's minimum)\n"
            "or hqq (half-quadratic fit under an lp error, robust to outliers; same layout and\n"
            "decoding speed)",
            [&rt](const std::string& v) { rt.cache.quant = model::parse_quant_method(v); }, "minmax");
    t.value("cache-axis", "B=A,...",
            "quantization axis per buffer: k, v (MHA/GQA), c, k_r (MLA) = token or channel",
            [&rt](const std::string& v) {
              std::istringstream in(v);
              std::string item;
              while (std::getline(in, item, ',')) {
                auto eq = item.find('=');
                check(eq != std::string::npos, "--cache-axis expects BUFFER=token|channel, got \"" + item + "\"");
                const std::string name = item.substr(0, eq);
                check(name == "k" || name == "v" || name == "c" || name == "k_r",
                      "--cache-axis: unknown buffer \"" + name + "\" (use k, v, c or k_r)");
                rt.cache.axis_of[name] = model::parse_quant_axis(item.substr(eq + 1));
              }
            },
            "k=channel,v=token,c=token,k_r=channel");
  }
  if (parts & kAttn)
    t.value("attn", "A",
            "MLA attention: absorbed (score against the cached latent), materialize (rebuild K/V),\n"
            "or auto (absorbed for decoding, materialize for long prefill chunks)",
            [&rt](const std::string& v) { rt.attn = model::parse_attn_mode(v); }, "auto");
  if (parts & kAttn)
    t.value("attn-kernel", "K",
            "fused (tiled online-softmax kernels, masks from positions) or reference (libtorch, explicit mask)",
            [&rt](const std::string& v) {
              rt.reference_attention = parse_choice("attn-kernel", v, {"fused", "reference"}) == "reference";
            },
            "fused");
  if (parts & kAttn)
    t.value("decode-step", "S",
            "one sequence's decode step: fused (one parallel region over all layers, no libtorch op inside;\n"
            "MHA/GQA with a cache in the compute dtype, else layers) or layers (module by module)",
            [&rt](const std::string& v) {
              rt.decode_step = parse_choice("decode-step", v, {"fused", "layers"}) == "fused"
                                   ? model::DecodeStepMode::Fused
                                   : model::DecodeStepMode::Layers;
            },
            "fused");
}

std::string dtype_flag_name(torch::ScalarType t) {
  return t == torch::kFloat32 ? "f32" : t == torch::kBFloat16 ? "bf16" : "f16";
}

nlohmann::json runtime_json(const model::RuntimeOptions& rt) {
  nlohmann::json j{{"device", rt.device.str()},
                   {"dtype", io::torch_dtype_name(rt.dtype)},
                   {"attn", model::attn_mode_name(rt.attn)},
                   {"attn_kernel", rt.reference_attention ? "reference" : "fused"},
                   {"decode_step", rt.decode_step == model::DecodeStepMode::Fused ? "fused" : "layers"},
                   {"kernels", kernels::variant_name(kernels::resolve_variant(kernels::Variant::Auto))},
                   {"plan", model::plan_execution(rt).to_json()}};
  j["cache_type"] = rt.cache.type ? model::cache_type_name(*rt.cache.type) : "compute dtype";
  if (rt.cache.type && model::is_quantized(*rt.cache.type)) {
    const auto& f = kernels::cache_format(*rt.cache.type);
    j["cache_residual"] = rt.cache.residual;
    j["cache_group"] = f.group > 0 ? f.group : rt.cache.group;
    j["cache_quant"] = model::quant_method_name(rt.cache.quant);
  }
  return j;
}

}  // namespace mha2mla::cli
