#pragma once
// Stored outputs of the independent PyTorch oracle (tests/oracle/*.py) for the tiny configurations, as
// llm.c's test_gpt2 keeps its reference state, so these checks also run where Python is missing. The dumps
// (tests/oracle/dumps/NAME.safetensors) hold the inputs and the oracle's outputs, not the model: the model's
// weights come from a counter-based generator written here (dump_model), which no library update can change,
// so they stay a few KB each. MHA2MLA_REGENERATE_DUMPS=1 rewrites them from the oracle (Debian's python3-torch).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "io/safetensors.h"
#include "testing/tiny_model.h"

namespace mha2mla::testutil {

inline std::string dump_path(const std::string& name) {
  return MHA2MLA_SOURCE_DIR "/tests/oracle/dumps/" + name + ".safetensors";
}

inline bool regenerate_dumps() {
  const char* e = std::getenv("MHA2MLA_REGENERATE_DUMPS");
  return e && std::string(e) == "1";
}

// splitmix64: value i of stream `stream` under `seed`, as a uniform double in [0, 1).
inline double dump_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull + i * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// n values, uniform with mean 0 and standard deviation `sd`, as float32 (float64 when asked).
inline torch::Tensor dump_values(uint64_t seed, uint64_t stream, int64_t n, double sd,
                                 torch::ScalarType dtype = torch::kFloat32) {
  auto t = torch::empty({n}, torch::kFloat64);
  auto* p = t.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = (2.0 * dump_uniform(seed, stream, uint64_t(i)) - 1.0) * std::sqrt(3.0) * sd;
  return t.to(dtype);
}

// The model a dump was made from: every parameter (in named_parameters order) from its own stream, norm
// weights around 1. Part of the dumps' format: changing it invalidates them.
inline model::Transformer dump_model(const std::string& kind, uint64_t seed) {
  auto m = make_random_model(tiny_config(kind), seed);
  torch::NoGradGuard ng;
  uint64_t stream = 0;
  for (auto& kv : m->named_parameters(true)) {
    auto& p = kv.value();
    auto v = dump_values(seed, stream++, p.numel(), 0.2).view(p.sizes());
    if (p.dim() == 1 && kv.key().find("norm") != std::string::npos) v = v + 1.0f;
    p.copy_(v);
  }
  return m;
}

// [B, T] token ids below vocab, from the same generator.
inline torch::Tensor dump_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto ids = torch::empty({b, t}, torch::kInt64);
  auto* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < b * t; ++i) p[i] = static_cast<int64_t>(dump_uniform(seed, 1u << 20, uint64_t(i)) * vocab);
  return ids;
}

// [[id, ...], ...] of a [B, T] tensor, as the oracle scripts read them.
inline nlohmann::json ids_json(const torch::Tensor& ids) {
  auto c = ids.contiguous();
  nlohmann::json j = nlohmann::json::array();
  for (int64_t b = 0; b < c.size(0); ++b)
    j.push_back(std::vector<int64_t>(c[b].data_ptr<int64_t>(), c[b].data_ptr<int64_t>() + c.size(1)));
  return j;
}

// Runs tests/oracle/SCRIPT ARGS with Debian's python3; only when regenerating.
inline void run_oracle_script(const std::string& script_and_args) {
  ASSERT_TRUE(python_has_torch()) << "regenerating the dumps needs /usr/bin/python3 with torch";
  const std::string cmd = debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/" + script_and_args;
  ASSERT_EQ(run(cmd), 0) << cmd;
}

// Opens a dump, failing the test (not skipping it) when it is missing.
inline std::unique_ptr<io::SafetensorsFile> open_dump(const std::string& name) {
  const auto path = dump_path(name);
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "missing dump " << path << " (MHA2MLA_REGENERATE_DUMPS=1 writes it)";
    return nullptr;
  }
  return std::make_unique<io::SafetensorsFile>(path);
}

}  // namespace mha2mla::testutil
