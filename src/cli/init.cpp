// mha2mla init: a randomly initialised model folder from a config.json (the start of pretraining).
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/cli.h"
#include "model/transformer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_read.h"
#include "util/publish_dir.h"

namespace mha2mla::cli {

int cmd_init(const Args& a) {
  if (a.help()) {
    std::puts(
        "usage: mha2mla init --config FILE --out DIR [--tokenizer PATH] [--seed S] [--std X] [--dtype f32|bf16] [--json]\n\n"
        "Writes DIR/config.json and DIR/model.safetensors with weights drawn as HF does for Llama:\n"
        "N(0, X) matrices and embeddings, unit norms, zero biases.\n\n"
        "  --config FILE      an HF config.json (llama, mistral, qwen2, qwen3)\n"
        "  --out DIR          output folder (must not exist or be empty)\n"
        "  --tokenizer PATH   tokenizer.json (or a folder holding one) to copy alongside\n"
        "  --seed S           random seed (default 0)\n"
        "  --std X            initializer range (default: the config's initializer_range, else 0.02)\n"
        "  --dtype T          storage dtype, f32 (default) or bf16\n"
        "  --json             print {out, parameters} as JSON");
    return 0;
  }
  a.validate({"config", "out", "tokenizer", "seed", "std", "dtype"}, {"json"});
  namespace fs = std::filesystem;
  const std::string cfg_path = a.require("config"), out = a.require("out");
  const nlohmann::json j = read_json_file(cfg_path);
  auto cfg = io::ModelConfig::from_json(j, cfg_path);
  double std_dev = a.get_double("std", j.value("initializer_range", 0.02));
  check(std_dev > 0, "--std must be positive");
  auto dtype = model::parse_compute_dtype(a.get_or("dtype", "f32"));
  std::string tok_src;
  if (auto t = a.get("tokenizer")) {
    tok_src = fs::is_directory(*t) ? (fs::path(*t) / "tokenizer.json").string() : *t;
    check(fs::is_regular_file(tok_src), "tokenizer not found: " + *t);
  }
  check(!fs::exists(out) || (fs::is_directory(out) && fs::is_empty(out)), out + " already exists and is not empty");
  int64_t params = 0;
  publish_dir(out, [&](const std::string& tmp) {
    model::Transformer m(cfg, dtype);
    for (const auto& p : m->parameters()) params += p.numel();
    model::init_weights(*m, static_cast<uint64_t>(a.get_int("seed", 0)), std_dev);
    model::save_model(*m, tmp);
    if (!tok_src.empty()) fs::copy_file(tok_src, fs::path(tmp) / "tokenizer.json");
  }, /*replace=*/false);
  if (a.flag("json")) {
    std::cout << nlohmann::json{{"out", out}, {"parameters", params}}.dump() << "\n";
  } else {
    std::printf("wrote %s (%.2fM parameters)\n", out.c_str(), params / 1e6);
  }
  return 0;
}

}  // namespace mha2mla::cli
