#pragma once
// Test helpers: random tiny models in HF layout, temp folders, and the PyTorch oracle.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/config.h"
#include "model/transformer.h"
#include "testing/files.h"

namespace mha2mla::testutil {

// The four architectures the runtime must reproduce exactly.
inline nlohmann::json tiny_config(const std::string& kind) {
  nlohmann::json j{{"model_type", "llama"},   {"vocab_size", 97},           {"hidden_size", 64},
                   {"intermediate_size", 96}, {"num_hidden_layers", 2},     {"num_attention_heads", 4},
                   {"num_key_value_heads", 4}, {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
                   {"max_position_embeddings", 128}, {"tie_word_embeddings", false}, {"bos_token_id", 1},
                   {"eos_token_id", 2},       {"torch_dtype", "float32"}};
  if (kind == "llama-mha") return j;
  if (kind == "llama-gqa") {
    j["num_key_value_heads"] = 2;
    j["tie_word_embeddings"] = true;
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}};
    return j;
  }
  if (kind == "qwen2") {
    j["model_type"] = "qwen2";
    j["num_key_value_heads"] = 2;
    j["rope_theta"] = 1000000.0;
    return j;
  }
  if (kind == "qwen3") {
    j["model_type"] = "qwen3";
    j["num_key_value_heads"] = 2;
    j["head_dim"] = 32;  // differs from hidden/heads, as in real Qwen3
    j["attention_bias"] = false;
    j["tie_word_embeddings"] = true;
    return j;
  }
  ADD_FAILURE() << "unknown tiny config " << kind;
  return j;
}

// Every parameter random (norm weights and biases too), so each one's role is exercised.
inline model::Transformer make_random_model(const nlohmann::json& cfg_json, uint64_t seed,
                                            torch::ScalarType dtype = torch::kFloat32) {
  auto cfg = io::ModelConfig::from_json(cfg_json, "test config");
  model::Transformer m(cfg, dtype);
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& kv : m->named_parameters(true)) {
    auto& p = kv.value();
    auto r = at::normal(0.0, 0.2, p.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
    if (p.dim() == 1 && kv.key().find("norm") != std::string::npos) r = r + 1.0;
    p.copy_(r);
  }
  return m;
}

inline std::string debian_python() {
  for (const char* p : {"/usr/bin/python3", "/bin/python3"})
    if (std::filesystem::exists(p)) return p;
  return "";
}

inline bool python_has_torch() {
  static int cached = -1;
  if (cached < 0) {
    auto py = debian_python();
    cached = !py.empty() && std::system((py + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
  }
  return cached == 1;
}

// Exit status of a shell command; a command killed by signal S counts as 128 + S (as the shell reports it).
inline int run(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  if (st == -1) return 127;
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return WEXITSTATUS(st);
}

}  // namespace mha2mla::testutil
