// mha2mla inspect: config summary and tensor table of a model folder.
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "model/attention.h"
#include "io/config.h"
#include "io/safetensors.h"

namespace mha2mla::cli {

int cmd_inspect(const Args& a) {
  std::string dir;
  bool json = false;
  model::RuntimeOptions rt;
  OptionTable t("inspect", "--model DIR [--cache-type T] [--json]",
                "Prints the model's config, its KV cache size per token, and a table of its tensors.");
  t.required("model", "DIR", "HF-layout model folder (config.json + safetensors)", [&](auto& v) { dir = v; });
  add_runtime_options(t, rt, kDtype | kCache);
  t.toggle("json", "one JSON object: {config, tensors: [{name, dtype, shape}], parameters, kv_cache_bytes_per_token,\n"
                   "kv_cache_buffers}; the bytes are for tokens held in the cache type (quantized tokens\n"
                   "for integer types, scales and zero points included), across all layers",
           json);
  if (!t.parse(a)) return 0;
  io::check_model_folder(dir, io::kModelConfig | io::kModelWeights);
  auto cfg = io::ModelConfig::load(dir);
  auto ckpt = io::Checkpoint::open(dir);
  int64_t params = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& name : ckpt.names()) {
    const auto& ti = ckpt.info(name);
    int64_t n = 1;
    for (auto s : ti.shape) n *= s;
    params += n;
    tensors.push_back({{"name", name}, {"dtype", io::dtype_name(ti.dtype)}, {"shape", ti.shape}});
  }
  // The cache formula, per token across all layers, for the chosen storage.
  const auto specs = model::cache_spec_for(cfg);
  const double per_token = model::bytes_per_token(specs, rt.cache, rt.dtype) * static_cast<double>(cfg.num_layers);
  nlohmann::json buffers = nlohmann::json::array();
  for (const auto& b : specs) {
    auto st = model::resolve_storage(b, rt.cache, rt.dtype);
    buffers.push_back({{"name", b.name},
                       {"heads", b.heads},
                       {"width", b.width},
                       {"type", model::cache_type_name(st.type)},
                       {"axis", model::quant_axis_name(st.axis)},
                       {"bytes_per_token", model::bytes_per_token({b}, rt.cache, rt.dtype) * cfg.num_layers}});
  }
  if (json) {
    nlohmann::json out{{"config", cfg.to_json()},
                       {"tensors", tensors},
                       {"parameters", params},
                       {"kv_cache_bytes_per_token", per_token},
                       {"kv_cache_buffers", buffers}};
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::printf("model        %s\n", dir.c_str());
  std::printf("architecture %s\n", cfg.model_type.c_str());
  std::printf("layers       %lld\n", static_cast<long long>(cfg.num_layers));
  std::printf("hidden       %lld (intermediate %lld)\n", static_cast<long long>(cfg.hidden_size),
              static_cast<long long>(cfg.intermediate_size));
  std::printf("heads        %lld query, %lld kv, head_dim %lld%s\n", static_cast<long long>(cfg.num_heads),
              static_cast<long long>(cfg.num_kv_heads), static_cast<long long>(cfg.head_dim),
              cfg.num_kv_heads < cfg.num_heads ? " (GQA)" : " (MHA)");
  if (cfg.is_mla) {
    const auto& m = cfg.mla;
    const int64_t r = m.rope_dim, latent = m.latent_dim(cfg.num_kv_heads, cfg.head_dim);
    const int64_t after = cfg.num_kv_heads * r + latent, before = 2 * cfg.num_kv_heads * cfg.head_dim;
    std::printf("attention    MLA: %s RoPE on %lld of %lld dims, %s latent (d_kv %lld, width %lld)\n",
                m.partial_rope_version.c_str(), static_cast<long long>(r), static_cast<long long>(cfg.head_dim),
                m.svd_init_method.c_str(), static_cast<long long>(m.low_rank), static_cast<long long>(latent));
    std::printf("kv cache     %lld of %lld values per token and layer (%.2f%%)\n", static_cast<long long>(after),
                static_cast<long long>(before), 100.0 * static_cast<double>(after) / static_cast<double>(before));
  }
  std::printf("cache/token  %.1f bytes across %lld layers (", per_token, static_cast<long long>(cfg.num_layers));
  for (size_t i = 0; i < buffers.size(); ++i)
    std::printf("%s%s %s", i ? ", " : "", buffers[i]["name"].get<std::string>().c_str(),
                buffers[i]["type"].get<std::string>().c_str());
  std::printf(")\n");
  std::printf("vocab        %lld%s\n", static_cast<long long>(cfg.vocab_size),
              cfg.tie_word_embeddings ? " (tied lm_head)" : "");
  std::printf("rope         theta %g, scaling %s\n", cfg.rope_theta, cfg.rope_scaling.type.c_str());
  std::printf("max context  %lld\n", static_cast<long long>(cfg.max_position_embeddings));
  std::printf("dtype        %s\n", cfg.torch_dtype.c_str());
  std::printf("parameters   %lld (%.1fM)\n\n", static_cast<long long>(params), params / 1e6);
  size_t w = 4;
  for (const auto& t : tensors) w = std::max(w, t["name"].get<std::string>().size());
  std::printf("%-*s  %-5s  %s\n", static_cast<int>(w), "name", "dtype", "shape");
  for (const auto& t : tensors) {
    std::string shape = "[";
    for (size_t i = 0; i < t["shape"].size(); ++i) shape += (i ? ", " : "") + std::to_string(t["shape"][i].get<int64_t>());
    shape += "]";
    std::printf("%-*s  %-5s  %s\n", static_cast<int>(w), t["name"].get<std::string>().c_str(),
                t["dtype"].get<std::string>().c_str(), shape.c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
