// Streamed conversion: the output, written layer by layer into HF-style shards, re-reads identically to the
// in-memory path (every layer converted with convert_layer from the whole source in memory, then saved with
// save_checkpoint), for sharded and single-file sources and outputs, f32 and bf16, with a calibration file.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>

#include "convert/calibrate.h"
#include "convert/mla_convert.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

// The in-memory path: the whole source in memory, each layer converted, everything saved at once.
io::NamedTensors in_memory_conversion(const std::string& src, const convert::ConvertOptions& o,
                                      const std::string& calib_path) {
  auto cfg = io::ModelConfig::load(src);
  auto ck = io::Checkpoint::open(src);
  std::map<std::string, torch::Tensor> all;
  for (const auto& n : ck.names()) all[n] = ck.get(n).clone();
  convert::LayerShape s{cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim};
  convert::CalibStats calib;
  torch::Tensor scores;
  if (!calib_path.empty()) {
    calib = convert::load_calib(calib_path);
    scores = convert::two_norm_scores(calib, s.n_kv);
  }
  auto sel = convert::select_frequencies(o.rope, o.rope_dims, s.d_h, cfg.num_layers, s.n_kv, o.uniform_start, scores);
  io::NamedTensors out;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    auto f32 = [&](const std::string& k) {
      auto it = all.find(p + k);
      if (it == all.end()) return torch::Tensor();
      auto t = it->second.to(torch::kFloat32);
      all.erase(it);
      return t;
    };
    const auto dt = all.at(p + "q_proj.weight").scalar_type();
    convert::AttnWeights w{f32("q_proj.weight"), f32("q_proj.bias"), f32("k_proj.weight"),
                           f32("k_proj.bias"),   f32("v_proj.weight"), f32("v_proj.bias")};
    torch::Tensor cov, cov_h;
    if (!calib_path.empty()) {
      cov = calib.cov.at(l);
      cov_h = calib.cov_heldout.at(l);
    }
    for (auto& [k, t] : convert::convert_layer(w, s, sel[l], o, cov, cov_h).tensors) out.push_back({p + k, t.to(dt)});
  }
  for (auto& [n, t] : all) out.push_back({n, t});
  return out;
}

void expect_identical(const std::string& dir, const io::NamedTensors& want) {
  auto ck = io::Checkpoint::open(dir);
  EXPECT_EQ(ck.names().size(), want.size());
  for (const auto& [n, t] : want) {
    ASSERT_TRUE(ck.has(n)) << n << " missing from " << dir;
    auto got = ck.get(n);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << n;
    EXPECT_TRUE(torch::equal(got, t)) << n << " differs in " << dir;
  }
}

class Streamed : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(Streamed, ShardedOutputEqualsTheInMemoryPath) {
  const auto dtype = GetParam();
  auto base = testutil::temp_dir(std::string("streamed-") + c10::toString(dtype));
  auto cfg = testutil::tiny_config("qwen2");  // GQA with q/k/v biases: every kind of tensor moves
  cfg["num_hidden_layers"] = 3;
  auto m = testutil::make_random_model(cfg, 9, dtype);
  model::save_model(*m, base + "/src", /*max_shard_bytes=*/16 * 1024);  // a sharded source
  ASSERT_TRUE(fs::exists(base + "/src/model.safetensors.index.json"));

  // A calibration file (2-norm selection and held-out errors), made on the model in fp32.
  auto mf = model::load_model(base + "/src", torch::kFloat32);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 96; ++i) ids.push_back((i * 37 + 11) % 97);
  auto stats = convert::calibrate(*mf, ids, 4, 24);
  stats.fingerprint = convert::model_fingerprint(base + "/src");
  convert::save_calib(base + "/src.calib", stats);

  convert::ConvertOptions o;
  o.rope = convert::RopeStrategy::TwoNorm;
  o.rope_dims = 4;
  o.svd = "joint";
  o.dkv = 3;
  auto want = in_memory_conversion(base + "/src", o, base + "/src.calib");
  io::save_checkpoint(base + "/mem", want, 0);

  o.max_shard_bytes = 12 * 1024;
  convert::convert_model(base + "/src", base + "/sharded", o, base + "/src.calib");
  o.max_shard_bytes = 0;
  convert::convert_model(base + "/src", base + "/single", o, base + "/src.calib");

  // HF's layout: numbered shards and an index, nothing temporary left behind.
  int shards = 0;
  const std::regex shard_re(R"(model-(\d{5})-of-(\d{5})\.safetensors)");
  for (const auto& e : fs::directory_iterator(base + "/sharded")) {
    const auto fn = e.path().filename().string();
    EXPECT_EQ(fn.find("tmp"), std::string::npos) << fn;
    shards += std::regex_match(fn, shard_re);
  }
  EXPECT_GE(shards, 3);
  EXPECT_TRUE(fs::exists(base + "/sharded/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(base + "/single/model.safetensors"));
  for (const auto& e : fs::directory_iterator(base))
    EXPECT_EQ(e.path().filename().string().find(".tmp-convert"), std::string::npos);

  expect_identical(base + "/sharded", want);
  expect_identical(base + "/single", want);
  expect_identical(base + "/mem", want);

  // And it runs as a model.
  torch::NoGradGuard ng;
  auto mla = model::load_model(base + "/sharded", torch::kFloat32);
  auto logits = mla->forward(torch::tensor({{1, 2, 3, 4}}, torch::kInt64));
  EXPECT_TRUE(logits.isfinite().all().item<bool>());
  fs::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Streamed, ::testing::Values(torch::kFloat32, torch::kBFloat16));

}  // namespace
