// mha2mla init: a randomly initialised model folder from a config.json (the start of pretraining).
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "model/transformer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_read.h"
#include "util/publish_dir.h"

namespace mha2mla::cli {

int cmd_init(const Args& a) {
  namespace fs = std::filesystem;
  std::string cfg_path, out, tok_arg;
  int64_t seed = 0;
  double std_dev = -1;
  auto dtype = torch::kFloat32;
  bool json = false;
  OptionTable t("init", "--config FILE --out DIR [options]",
                "Writes DIR/config.json and DIR/model.safetensors with weights drawn as HF does for Llama:\n"
                "N(0, X) matrices and embeddings, unit norms, zero biases.");
  t.required("config", "FILE", "an HF config.json (llama, mistral, qwen2, qwen3)", [&](auto& v) { cfg_path = v; })
      .required("out", "DIR", "output folder (must not exist or be empty)", [&](auto& v) { out = v; })
      .text("tokenizer", "PATH", "tokenizer.json (or a folder holding one) to copy alongside", tok_arg, "none")
      .integer("seed", "S", "random seed", seed, 0)
      .number("std", "X", "initializer range", std_dev, "the config's initializer_range, else 0.02")
      .value("dtype", "T", "storage dtype: f32, bf16 or f16", [&](auto& v) { dtype = model::parse_compute_dtype(v); },
             "f32")
      .toggle("json", "print {out, parameters} as JSON", json);
  if (!t.parse(a)) return 0;
  const nlohmann::json j = read_json_file(cfg_path);
  auto cfg = io::ModelConfig::from_json(j, cfg_path);
  if (!a.flag("std")) std_dev = j.value("initializer_range", 0.02);
  usage_check(std_dev > 0, "--std must be positive");
  std::string tok_src;
  if (!tok_arg.empty()) {
    tok_src = fs::is_directory(tok_arg) ? (fs::path(tok_arg) / "tokenizer.json").string() : tok_arg;
    check(fs::is_regular_file(tok_src), "tokenizer not found: " + tok_arg);
  }
  check(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), out + " already exists and is not empty");
  int64_t params = 0;
  publish_dir(out, [&](const std::string& tmp) {
    model::Transformer m(cfg, dtype);
    for (const auto& p : m->parameters()) params += p.numel();
    model::init_weights(*m, static_cast<uint64_t>(seed), std_dev);
    model::save_model(*m, tmp);
    if (!tok_src.empty()) fs::copy_file(tok_src, fs::path(tmp) / "tokenizer.json");
  }, /*replace=*/false);
  if (json) {
    std::cout << nlohmann::json{{"out", out}, {"parameters", params}}.dump() << "\n";
  } else {
    std::printf("wrote %s (%.2fM parameters)\n", out.c_str(), params / 1e6);
  }
  return 0;
}

}  // namespace mha2mla::cli
