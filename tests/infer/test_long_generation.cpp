// Long batched generation: batch 8, ragged prompts, 2,000 steps with the full K/V cache and with the MLA latent
// cache (absorbed decoding), about 3 s each here. The cache's reported size must equal its formula after every
// step; under scripts/test.sh --sanitize the same runs are checked for leaks by LeakSanitizer.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "convert/mla_convert.h"
#include "infer/generate.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBatch = 8;

// Decoding steps after the prompt: 2,000, or MHA2MLA_LONG_GENERATION_STEPS (for longer runs by hand).
int64_t steps() {
  const char* e = std::getenv("MHA2MLA_LONG_GENERATION_STEPS");
  const int64_t n = e ? std::atoll(e) : 2000;
  EXPECT_GT(n, 0) << "MHA2MLA_LONG_GENERATION_STEPS=" << e;
  return n;
}

// What the cache should hold for `slots` positions of the whole batch, from the config alone.
// Full K/V: keys and values, n_kv·d_h each per token. MLA: the latent plus the kept RoPE keys.
// (One place to adapt when the cache gains other layouts or quantized storage.)
int64_t expected_cache_bytes(const io::ModelConfig& c, int64_t batch, int64_t slots, int64_t elem_bytes) {
  const int64_t per_token_layer = c.is_mla ? c.mla.latent_dim(c.num_kv_heads, c.head_dim) + c.num_kv_heads * c.mla.rope_dim
                                           : 2 * c.num_kv_heads * c.head_dim;
  return c.num_layers * batch * slots * per_token_layer * elem_bytes;
}

nlohmann::json long_config() {
  auto j = testutil::tiny_config("llama-gqa");
  j["max_position_embeddings"] = 4096;
  return j;
}

// Ragged prompts: lengths 1..15, left-padded into one batch.
std::vector<std::vector<int64_t>> ragged_prompts(int64_t vocab) {
  std::vector<std::vector<int64_t>> p;
  for (int64_t b = 0; b < kBatch; ++b) {
    std::vector<int64_t> row;
    for (int64_t i = 0; i < 1 + (b * 5) % 15; ++i) row.push_back((b * 31 + i * 7) % vocab);
    p.push_back(row);
  }
  return p;
}

// Greedy decoding driven step by step, checking the cache after every forward.
void decode_and_check(model::TransformerImpl& m, int64_t steps) {
  torch::NoGradGuard ng;
  const auto& cfg = m.config();
  auto prompts = ragged_prompts(cfg.vocab_size);
  int64_t T = 0;
  for (const auto& p : prompts) T = std::max<int64_t>(T, int64_t(p.size()));
  auto ids = torch::zeros({kBatch, T}, torch::kInt64);
  auto valid = torch::zeros({kBatch, T}, torch::kBool);
  for (int64_t b = 0; b < kBatch; ++b) {
    const int64_t pad = T - int64_t(prompts[b].size());
    for (size_t i = 0; i < prompts[b].size(); ++i) ids[b][pad + int64_t(i)] = prompts[b][i];
    valid[b].narrow(0, pad, int64_t(prompts[b].size())).fill_(true);
  }
  auto cache = m.make_cache(kBatch);
  const int64_t elem = torch::elementSize(m.dtype());
  auto last = m.logits(m.hidden(ids, cache.get(), valid)).select(1, T - 1);
  ASSERT_EQ(cache->bytes(), expected_cache_bytes(cfg, kBatch, T, elem));
  const auto all_valid = torch::ones({kBatch, 1}, torch::kBool);
  for (int64_t s = 0; s < steps; ++s) {
    auto next = last.argmax(-1).view({kBatch, 1});
    last = m.logits(m.hidden(next, cache.get(), all_valid)).select(1, 0);
    ASSERT_EQ(cache->filled(), T + s + 1);
    ASSERT_EQ(cache->bytes(), expected_cache_bytes(cfg, kBatch, T + s + 1, elem)) << "after step " << s + 1;
  }
  EXPECT_TRUE(torch::isfinite(last).all().item<bool>());
  // Each row's positions advanced by its own prompt length, not the padded one.
  for (int64_t b = 0; b < kBatch; ++b)
    EXPECT_EQ(cache->next_positions()[b].item<int64_t>(), int64_t(prompts[b].size()) + steps);
}

TEST(LongGeneration, FullKVCacheBytesFollowTheFormula) {
  auto m = testutil::make_random_model(long_config(), 21);
  decode_and_check(*m, steps());
}

TEST(LongGeneration, LatentCacheBytesFollowTheFormula) {
  auto dir = testutil::temp_dir("long-gen-mla");
  model::save_model(*testutil::make_random_model(long_config(), 22), dir + "/src");
  convert::ConvertOptions o;
  o.rope = convert::parse_rope_strategy("high");
  o.rope_dims = 4;
  o.svd = "joint";
  o.dkv = 6;
  convert::convert_model(dir + "/src", dir + "/mla", o, "");
  auto m = model::load_model(dir + "/mla", torch::kFloat32);
  ASSERT_TRUE(m->config().is_mla);
  decode_and_check(*m, steps());
  fs::remove_all(dir);
}

// The public generation loop over the same length, for LeakSanitizer.
TEST(LongGeneration, GenerateRunsTheWholeLength) {
  auto m = testutil::make_random_model(long_config(), 23);
  infer::GenerateOptions opt;
  opt.max_new = steps();
  auto out = infer::generate(*m, ragged_prompts(m->config().vocab_size), opt);
  ASSERT_EQ(int64_t(out.size()), kBatch);
  for (const auto& row : out) EXPECT_EQ(int64_t(row.size()), opt.max_new);
}

}  // namespace
