// mha2mla inspect: config summary and tensor table of a model folder.
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "io/config.h"
#include "io/safetensors.h"

namespace mha2mla::cli {

int cmd_inspect(const Args& a) {
  if (a.help()) {
    std::puts(
        "usage: mha2mla inspect --model DIR [--json]\n\n"
        "Prints the model's config and a table of its tensors (name, dtype, shape).\n\n"
        "  --model DIR   HF-layout model folder (config.json + safetensors)\n"
        "  --json        one JSON object: {config, tensors: [{name, dtype, shape}], parameters}");
    return 0;
  }
  a.validate({"model"}, {"json"});
  const std::string dir = a.require("model");
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
  if (a.flag("json")) {
    nlohmann::json out{{"config", cfg.to_json()}, {"tensors", tensors}, {"parameters", params}};
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
