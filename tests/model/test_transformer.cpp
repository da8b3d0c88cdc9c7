// The runtime against an independent PyTorch implementation, and cached decoding against recomputation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "infer/generate.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"
#include "util/error.h"

using namespace mha2mla;
using mha2mla::testutil::make_random_model;
using mha2mla::testutil::tiny_config;

namespace {

using testutil::expect_error;

torch::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, vocab, {b, t}, gen, torch::kInt64);
}

class Arch : public ::testing::TestWithParam<std::string> {};

TEST_P(Arch, LogitsMatchPyTorchReference) {
  MHA2MLA_REQUIRE_ORACLE(testutil::python_has_torch(), "Debian python3 with torch (python3-torch) not found");
  const std::string kind = GetParam();
  auto dir = testutil::temp_dir("ref-" + kind);
  auto m = make_random_model(tiny_config(kind), 7);
  model::save_model(*m, dir);
  auto ids = random_ids(2, 40, m->config().vocab_size, 11);
  {
    std::ofstream f(dir + "/ids.json");
    nlohmann::json j = nlohmann::json::array();
    for (int64_t b = 0; b < ids.size(0); ++b) {
      nlohmann::json row = nlohmann::json::array();
      for (int64_t t = 0; t < ids.size(1); ++t) row.push_back(ids[b][t].item<int64_t>());
      j.push_back(row);
    }
    f << j.dump();
  }
  std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/torch_ref.py --threads 2 --model " +
                    dir + " --ids " + dir + "/ids.json --out " + dir + "/ref.safetensors";
  ASSERT_EQ(testutil::run(cmd), 0) << cmd;
  auto ref = io::SafetensorsFile(dir + "/ref.safetensors").tensor("logits");

  auto loaded = model::load_model(dir, torch::kFloat32);  // through the real loader, not the in-memory model
  torch::NoGradGuard ng;
  auto ours = loaded->forward(ids);
  ASSERT_EQ(ours.sizes(), ref.sizes());
  double diff = (ours - ref).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4) << kind << ": max abs diff " << diff;
  EXPECT_GT(ref.abs().max().item<double>(), 0.1) << "reference logits are degenerate";
  std::filesystem::remove_all(dir);
}

TEST_P(Arch, CachedDecodingMatchesRecomputation) {
  const std::string kind = GetParam();
  auto m = make_random_model(tiny_config(kind), 3);
  torch::NoGradGuard ng;
  auto ids = random_ids(2, 24, m->config().vocab_size, 5);
  auto full = m->forward(ids);
  // Prefill 10 tokens, then one token at a time.
  auto cache = m->make_cache(2);
  std::vector<torch::Tensor> parts{m->forward(ids.narrow(1, 0, 10), cache.get())};
  for (int64_t t = 10; t < 24; ++t) parts.push_back(m->forward(ids.narrow(1, t, 1), cache.get()));
  auto inc = torch::cat(parts, 1);
  EXPECT_LE((inc - full).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(cache->filled(), 24);
  EXPECT_GT(cache->bytes(), 0);
}

TEST_P(Arch, BatchOfDifferentLengthsMatchesSingleSequences) {
  const std::string kind = GetParam();
  auto m = make_random_model(tiny_config(kind), 9);
  torch::NoGradGuard ng;
  std::vector<std::vector<int64_t>> prompts{{5, 17, 3, 44, 12, 9, 60}, {8, 2 + 20, 31}, {70, 71, 72, 73, 74}};
  infer::GenerateOptions opt;
  opt.max_new = 12;
  auto batched = infer::generate(*m, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = infer::generate(*m, {prompts[i]}, opt);
    EXPECT_EQ(batched[i], single[0]) << "row " << i;
    // And the single run equals greedy decoding by full recomputation.
    std::vector<int64_t> seq = prompts[i];
    for (int64_t step = 0; step < opt.max_new; ++step) {
      auto logits = m->forward(torch::tensor(seq, torch::kInt64).unsqueeze(0));
      seq.push_back(logits[0][-1].argmax().item<int64_t>());
    }
    EXPECT_EQ(std::vector<int64_t>(seq.begin() + static_cast<long>(prompts[i].size()), seq.end()), single[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, Arch, ::testing::Values("llama-mha", "llama-gqa", "qwen2", "qwen3"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

TEST(Transformer, Bf16IsCloseToF32) {
  auto m = make_random_model(tiny_config("llama-gqa"), 4);
  auto dir = testutil::temp_dir("bf16");
  model::save_model(*m, dir);
  auto m16 = model::load_model(dir, torch::kBFloat16);
  torch::NoGradGuard ng;
  auto ids = random_ids(1, 32, 97, 1);
  auto a = m->forward(ids);
  auto b = m16->forward(ids);
  double rel = ((a - b).norm() / a.norm()).item<double>();
  EXPECT_LT(rel, 0.05);
  // Cached bf16 decoding is consistent with bf16 recomputation of the last token.
  auto cache = m16->make_cache(1);
  m16->forward(ids.narrow(1, 0, 31), cache.get());
  auto last = m16->forward(ids.narrow(1, 31, 1), cache.get());
  EXPECT_LT(((last[0][0] - b[0][31]).norm() / b[0][31].norm()).item<double>(), 0.03);
  std::filesystem::remove_all(dir);
}

TEST(Transformer, ShardedCheckpointLoads) {
  auto m = make_random_model(tiny_config("qwen2"), 2);
  auto dir = testutil::temp_dir("sharded");
  model::save_model(*m, dir, /*max_shard_bytes=*/40000);
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  auto m2 = model::load_model(dir, torch::kFloat32);
  torch::NoGradGuard ng;
  auto ids = random_ids(1, 8, 97, 3);
  EXPECT_TRUE(torch::equal(m->forward(ids), m2->forward(ids)));
  std::filesystem::remove_all(dir);
}

TEST(BadInput, MissingTensorIsNamed) {
  auto m = make_random_model(tiny_config("llama-mha"), 1);
  auto dir = testutil::temp_dir("missing");
  auto w = model::named_weights(*m);
  w.erase(std::remove_if(w.begin(), w.end(), [](auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; }),
          w.end());
  io::save_checkpoint(dir, w);
  std::ofstream(dir + "/config.json") << tiny_config("llama-mha").dump();
  expect_error([&] { model::load_model(dir, torch::kFloat32); }, "missing tensor model.layers.1.mlp.up_proj.weight");
  std::filesystem::remove_all(dir);
}

TEST(BadInput, ShapeDisagreeingWithConfig) {
  auto m = make_random_model(tiny_config("llama-mha"), 1);
  auto dir = testutil::temp_dir("shape");
  model::save_model(*m, dir);
  auto cfg = tiny_config("llama-mha");
  cfg["intermediate_size"] = 100;
  std::ofstream(dir + "/config.json") << cfg.dump();
  expect_error([&] { model::load_model(dir, torch::kFloat32); }, "but the config implies");
  std::filesystem::remove_all(dir);
}

TEST(BadInput, UnsupportedArchitecture) {
  auto cfg = tiny_config("llama-mha");
  cfg["model_type"] = "gpt_neox";
  expect_error([&] { io::ModelConfig::from_json(cfg, "config.json"); }, "unsupported architecture \"gpt_neox\"");
  cfg["model_type"] = "llama";
  cfg["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  expect_error([&] { io::ModelConfig::from_json(cfg, "config.json"); }, "\"yarn\" is not supported");
  cfg.erase("rope_scaling");
  cfg["num_key_value_heads"] = 3;
  expect_error([&] { io::ModelConfig::from_json(cfg, "config.json"); }, "not a multiple");
}

TEST(BadInput, PromptLongerThanContext) {
  auto m = make_random_model(tiny_config("llama-mha"), 1);
  std::vector<int64_t> prompt(129, 5);
  infer::GenerateOptions opt;
  expect_error([&] { infer::generate(*m, {prompt}, opt); }, "max_position_embeddings");
  torch::NoGradGuard ng;
  expect_error([&] { m->forward(torch::full({1, 129}, 3, torch::kInt64)); }, "max_position_embeddings");
  expect_error([&] { m->forward(torch::full({1, 4}, 97, torch::kInt64)); }, "outside the vocabulary");
}

}  // namespace
