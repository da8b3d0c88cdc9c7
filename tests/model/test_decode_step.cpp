// The fused decode step (model/decode_step.h) against the layer-by-layer path it replaces: the same kernels with
// the same splits, so the logits must agree bit for bit, step after step, on every dtype, architecture and
// thread count; and where it does not apply, it must say why and leave the step to the layers.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "model/decode_step.h"
#include "model/transformer.h"
#include "testing/mla_model.h"
#include "testing/tiny_model.h"

namespace mha2mla::model {
namespace {

using testutil::make_random_model;
using testutil::tiny_config;

struct ThreadScope {
  int saved = at::get_num_threads();
  explicit ThreadScope(int n) { at::set_num_threads(n); }
  ~ThreadScope() { at::set_num_threads(saved); }
};

// Prefills `prompt` tokens (with `pad` left-padding slots when > 0), then decodes `steps` tokens greedily with
// the given step mode. Returns the logits of every decode step, [steps, V].
torch::Tensor decode(Transformer& m, DecodeStepMode mode, int64_t prompt, int64_t pad, int64_t steps,
                     const CacheOptions& co = {}) {
  m->set_decode_step(mode);
  auto cache = m->make_cache(1, co);
  auto gen = at::detail::createCPUGenerator(11);
  auto ids = at::randint(0, m->config().vocab_size, {1, pad + prompt}, gen, torch::kInt64);
  auto valid = torch::ones({1, pad + prompt}, torch::kBool);
  if (pad > 0) valid.narrow(1, 0, pad).fill_(false);
  auto h = m->hidden(ids, cache.get(), pad > 0 ? valid : torch::Tensor());
  auto tok = m->logits(h.select(1, pad + prompt - 1)).argmax(-1, true);
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < steps; ++i) {
    auto logits = m->logits(m->hidden(tok, cache.get()).select(1, 0));
    out.push_back(logits);
    tok = logits.argmax(-1, true);
  }
  return torch::cat(out, 0);
}

struct Case {
  std::string kind;
  torch::ScalarType dtype;
  int threads;
};

class FusedStep : public ::testing::TestWithParam<Case> {};

TEST_P(FusedStep, MatchesLayersBitForBit) {
  const auto c = GetParam();
  ThreadScope ts(c.threads);
  torch::NoGradGuard ng;
  auto cfg = tiny_config(c.kind);
  auto m = make_random_model(cfg, 21, c.dtype);
  // 60 prompt tokens and 12 steps: the cache outgrows its first 64 slots in the middle, so the buffers move.
  auto layers = decode(m, DecodeStepMode::Layers, 60, 0, 12);
  EXPECT_EQ(m->fused_decode_steps, 0);
  auto fused = decode(m, DecodeStepMode::Fused, 60, 0, 12);
  EXPECT_EQ(m->fused_decode_steps, 12) << "the fused step did not run";
  EXPECT_TRUE(torch::equal(fused, layers)) << c.kind << ": max abs diff " << (fused - layers).abs().max().item<double>();
}

TEST_P(FusedStep, PaddingAndSlidingWindowMatchLayers) {
  const auto c = GetParam();
  ThreadScope ts(c.threads);
  torch::NoGradGuard ng;
  auto cfg = tiny_config(c.kind);
  cfg["sliding_window"] = 9;
  auto m = make_random_model(cfg, 22, c.dtype);
  // Three padding slots before a 7-token prompt: every step's attention masks them (slot_valid) and, past 9
  // tokens, the window drops the oldest.
  auto layers = decode(m, DecodeStepMode::Layers, 7, 3, 10);
  auto fused = decode(m, DecodeStepMode::Fused, 7, 3, 10);
  EXPECT_EQ(m->fused_decode_steps, 10) << "the fused step did not run";
  EXPECT_TRUE(torch::equal(fused, layers)) << c.kind << ": max abs diff " << (fused - layers).abs().max().item<double>();
}

INSTANTIATE_TEST_SUITE_P(Tiny, FusedStep,
                         ::testing::Values(Case{"llama-mha", torch::kFloat32, 1}, Case{"llama-mha", torch::kBFloat16, 3},
                                           Case{"llama-gqa", torch::kFloat32, 3}, Case{"llama-gqa", torch::kFloat16, 1},
                                           Case{"qwen2", torch::kBFloat16, 1}, Case{"qwen2", torch::kFloat32, 3}),
                         [](const auto& info) {
                           std::string s = info.param.kind + "_" +
                                           (info.param.dtype == torch::kFloat32    ? "f32"
                                            : info.param.dtype == torch::kBFloat16 ? "bf16"
                                                                                   : "f16") +
                                           "_t" + std::to_string(info.param.threads);
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

// A tiny GQA model converted to MLA (RoPE on 4 of 16 dims per head, latent of dkv per KV head), loaded in
// `dtype`; the folder is removed once loaded.
Transformer converted(const std::string& svd, int64_t dkv, torch::ScalarType dtype) {
  auto base = testutil::temp_dir("fused-step-mla-" + svd);
  testutil::convert_tiny_mla(tiny_config("llama-gqa"), 25, base, svd, dkv);
  // Every KV head keeps other frequencies, so that a query head rotated as the wrong KV head shows ("high"
  // keeps the same ones everywhere). The weights were converted for the old ones: both paths run the same model.
  auto cfg = nlohmann::json::parse(testutil::slurp(base + "/mla/config.json"));
  for (auto& layer : cfg["mha2mla"]["rope_freq_indices"])
    for (size_t h = 0; h < layer.size(); ++h) layer[h] = {h, 5 + 2 * h};
  testutil::write_file(base + "/mla/config.json", cfg.dump());
  auto mla = load_model(base + "/mla", dtype);
  std::filesystem::remove_all(base);
  return mla;
}

class FusedStepMla : public ::testing::TestWithParam<std::tuple<std::string, torch::ScalarType, int>> {};

TEST_P(FusedStepMla, AbsorbedMatchesLayersBitForBit) {
  const auto [svd, dtype, threads] = GetParam();
  ThreadScope ts(threads);
  torch::NoGradGuard ng;
  auto m = converted(svd, 3, dtype);
  ASSERT_TRUE(m->config().is_mla);
  auto layers = decode(m, DecodeStepMode::Layers, 60, 0, 12);
  auto fused = decode(m, DecodeStepMode::Fused, 60, 0, 12);
  EXPECT_EQ(m->fused_decode_steps, 12) << "the fused step did not run";
  EXPECT_TRUE(torch::equal(fused, layers)) << svd << ": max abs diff " << (fused - layers).abs().max().item<double>();
  // Materialised decoding is not what the fused step runs: it must leave it to the layers.
  m->set_attn_mode(AttnMode::Materialize);
  decode(m, DecodeStepMode::Fused, 5, 0, 3);
  EXPECT_EQ(m->fused_decode_steps, 12);
}

INSTANTIATE_TEST_SUITE_P(Tiny, FusedStepMla,
                         ::testing::Values(std::make_tuple("joint", torch::kFloat32, 1),
                                           std::make_tuple("joint", torch::kBFloat16, 3),
                                           std::make_tuple("split", torch::kFloat32, 3),
                                           std::make_tuple("split", torch::kBFloat16, 1)),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) == torch::kFloat32 ? "_f32" : "_bf16") + "_t" +
                                  std::to_string(std::get<2>(info.param));
                         });

AttnContext decode_context() {
  AttnContext ctx;
  ctx.fused = true;
  return ctx;
}

TEST(FusedStepApplies, SaysWhyNot) {
  torch::NoGradGuard ng;
  auto m = make_random_model(tiny_config("llama-gqa"), 23);
  auto ctx = decode_context();
  EXPECT_EQ(DecodeStep::unsupported(*m, *m->make_cache(1), ctx), "");
  EXPECT_NE(DecodeStep::unsupported(*m, *m->make_cache(2), ctx).find("batch has 2 rows"), std::string::npos);
  CacheOptions int8;
  int8.type = CacheType::Int8;
  EXPECT_NE(DecodeStep::unsupported(*m, *m->make_cache(1, int8), ctx).find("cache"), std::string::npos);
  CacheOptions bf16;
  bf16.type = CacheType::BF16;  // f32 compute over a bf16 cache: the layers convert what they read
  EXPECT_NE(DecodeStep::unsupported(*m, *m->make_cache(1, bf16), ctx).find("compute dtype"), std::string::npos);
  auto q3 = make_random_model(tiny_config("qwen3"), 23);
  EXPECT_NE(DecodeStep::unsupported(*q3, *q3->make_cache(1), ctx).find("layer 0 normalises"), std::string::npos);
  ctx.fused = false;
  EXPECT_NE(DecodeStep::unsupported(*m, *m->make_cache(1), ctx), "");
  ctx.fused = true;
  m->attn_input_hook = [](int64_t, const torch::Tensor&) {};
  EXPECT_NE(DecodeStep::unsupported(*m, *m->make_cache(1), ctx).find("hook"), std::string::npos);
}

TEST(FusedStepApplies, UnsupportedCacheFallsBackToLayers) {
  torch::NoGradGuard ng;
  auto m = make_random_model(tiny_config("llama-mha"), 24);
  CacheOptions int8;
  int8.type = CacheType::Int8;
  int8.residual = 4;
  int8.group = 4;
  auto layers = decode(m, DecodeStepMode::Layers, 9, 0, 6, int8);
  auto fused = decode(m, DecodeStepMode::Fused, 9, 0, 6, int8);
  EXPECT_EQ(m->fused_decode_steps, 0);
  EXPECT_TRUE(torch::equal(fused, layers));
}

}  // namespace
}  // namespace mha2mla::model
