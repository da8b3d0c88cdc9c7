// The fused decode step (model/decode_step.h) against the layer-by-layer path it replaces: the same kernels with
// the same splits, so the logits must agree bit for bit, step after step, on every dtype, architecture and
// thread count; and where it does not apply, it must say why and leave the step to the layers.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "kernels/variants.h"
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

std::string dtype_name(torch::ScalarType t) {
  return t == torch::kFloat32 ? "f32" : t == torch::kBFloat16 ? "bf16" : "f16";
}

// Each case runs on every kernel variant this CPU can run (the cap lowers Auto for the whole model, as
// MHA2MLA_KERNELS does), so an AVX-512 machine also checks the AVX2 and portable paths, and an AVX2 machine the
// portable one.
template <class C>
std::vector<std::pair<C, kernels::Variant>> on_each_variant(const std::vector<C>& cases) {
  std::vector<std::pair<C, kernels::Variant>> out;
  for (const auto& c : cases)
    for (auto v : testutil::cpu_variants()) out.emplace_back(c, v);
  return out;
}

struct Case {
  std::string kind;
  torch::ScalarType dtype;
  int threads;
};

class FusedStep : public ::testing::TestWithParam<std::pair<Case, kernels::Variant>> {};

TEST_P(FusedStep, MatchesLayersBitForBit) {
  const auto c = GetParam().first;
  kernels::VariantCapScope cap(GetParam().second);
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
  const auto c = GetParam().first;
  kernels::VariantCapScope cap(GetParam().second);
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
                         ::testing::ValuesIn(on_each_variant<Case>(
                             {{"llama-mha", torch::kFloat32, 1}, {"llama-mha", torch::kBFloat16, 3},
                              {"llama-gqa", torch::kFloat32, 3}, {"llama-gqa", torch::kFloat16, 1},
                              {"qwen2", torch::kBFloat16, 1}, {"qwen2", torch::kFloat32, 3}})),
                         [](const auto& info) {
                           const auto& c = info.param.first;
                           std::string s = c.kind + "_" + dtype_name(c.dtype) + "_t" + std::to_string(c.threads) +
                                           "_" + kernels::variant_name(info.param.second);
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

using MlaCase = std::tuple<std::string, torch::ScalarType, int>;
class FusedStepMla : public ::testing::TestWithParam<std::pair<MlaCase, kernels::Variant>> {};

TEST_P(FusedStepMla, AbsorbedMatchesLayersBitForBit) {
  const auto [svd, dtype, threads] = GetParam().first;
  kernels::VariantCapScope cap(GetParam().second);
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
                         ::testing::ValuesIn(on_each_variant<MlaCase>(
                             {{"joint", torch::kFloat32, 1}, {"joint", torch::kBFloat16, 3},
                              {"split", torch::kFloat32, 3}, {"split", torch::kBFloat16, 1},
                              {"joint", torch::kFloat16, 1}})),
                         [](const auto& info) {
                           const auto& c = info.param.first;
                           return std::get<0>(c) + "_" + dtype_name(std::get<1>(c)) + "_t" +
                                  std::to_string(std::get<2>(c)) + "_" + kernels::variant_name(info.param.second);
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


// Several sequences decoded together over one block pool (TransformerImpl::decode_paged, the server's batched
// step): each row's logits are bit for bit what the sequence gets decoding alone in a pool of its own, step after
// step, whatever its neighbours' lengths and blocks, on every variant, for MHA, GQA, absorbed MLA and quantized
// caches; and they agree with decoding over a KVCache (hidden()), whose key axis is split elsewhere.
using ManyCase = std::tuple<std::string, torch::ScalarType, std::string>;  // kind, dtype, cache type
class DecodePaged : public ::testing::TestWithParam<std::pair<ManyCase, kernels::Variant>> {};

TEST_P(DecodePaged, EachRowIsWhatItGetsAloneAndWhatTheCacheGives) {
  const auto [kind, dtype, cache_type] = GetParam().first;
  kernels::VariantCapScope cap(GetParam().second);
  torch::NoGradGuard ng;
  auto m = kind == "mla" ? converted("joint", 3, dtype) : make_random_model(tiny_config(kind), 5, dtype);
  CacheOptions co;
  if (!cache_type.empty()) co.type = parse_cache_type(cache_type), co.residual = 8, co.group = 8;
  m->set_cache_options(co);
  const std::vector<int64_t> prompts = {9, 3, 17, 1, 12};
  const int64_t steps = 6, V = m->config().vocab_size, block = 8;
  auto prompt_ids = [&](size_t s) {
    auto gen = at::detail::createCPUGenerator(100 + s);
    return at::randint(0, V, {1, prompts[s]}, gen, torch::kInt64);
  };
  // Logits [steps, V] of each sequence of `which`, decoded together in one pool (a placeholder sequence makes the
  // blocks of the others scatter).
  auto paged = [&](const std::vector<size_t>& which) {
    auto pool = m->make_block_pool(40, block);
    auto hold = std::make_unique<PagedSequence>(*pool, 2);
    std::vector<std::unique_ptr<PagedSequence>> seqs;
    PagedBatch batch{pool.get(), {}};
    std::vector<int64_t> next;
    for (auto s : which) {
      seqs.push_back(std::make_unique<PagedSequence>(*pool, (prompts[s] + steps + block - 1) / block));
      if (seqs.size() == 1) hold.reset();
      auto cache = m->make_cache(1);
      next.push_back(m->logits(m->hidden(prompt_ids(s), cache.get()).select(1, prompts[s] - 1)).argmax(-1).item<int64_t>());
      seqs.back()->load(*cache);
      batch.seqs.push_back(seqs.back().get());
    }
    std::vector<std::vector<torch::Tensor>> out(which.size());
    for (int64_t i = 0; i < steps; ++i) {
      auto logits = m->logits(m->decode_paged(next, batch).select(1, 0));  // [n, V]
      for (size_t j = 0; j < which.size(); ++j) {
        out[j].push_back(logits[static_cast<int64_t>(j)]);
        next[j] = logits[static_cast<int64_t>(j)].argmax().item<int64_t>();
      }
    }
    std::vector<torch::Tensor> r;
    for (auto& o : out) r.push_back(torch::stack(o));
    return r;
  };
  auto together = paged({0, 1, 2, 3, 4});
  for (size_t s = 0; s < prompts.size(); ++s) {
    auto alone = paged({s})[0];
    EXPECT_TRUE(together[s].equal(alone)) << kind << " " << cache_type << " sequence " << s << ": max abs diff "
                                          << (together[s] - alone).abs().max().item<double>();
    // The same tokens through a KVCache: within the rounding of another split of the key axis.
    auto cache = m->make_cache(1);
    auto tok = m->logits(m->hidden(prompt_ids(s), cache.get()).select(1, prompts[s] - 1)).argmax(-1, true);
    for (int64_t i = 0; i < steps; ++i) {
      auto want = m->logits(m->hidden(tok, cache.get(), torch::ones({1, 1}, torch::kBool)).select(1, 0))[0];
      const double bound = (dtype == torch::kFloat32 ? 1e-4 : 3e-2) * (1.0 + want.abs().max().item<double>());
      EXPECT_LE((together[s][i] - want).abs().max().item<double>(), bound) << "sequence " << s << " step " << i;
      tok = together[s][i].argmax().view({1, 1});  // follow the paged tokens
    }
  }
  auto pool = m->make_block_pool(40, block);
  std::vector<std::unique_ptr<PagedSequence>> nine;
  PagedBatch batch{pool.get(), {}};
  for (int i = 0; i < 9; ++i) nine.push_back(std::make_unique<PagedSequence>(*pool, 1)), batch.seqs.push_back(nine.back().get());
  EXPECT_THROW(m->decode_paged(std::vector<int64_t>(9, 1), batch), Error);  // more rows than the GEMV keeps apart
}

INSTANTIATE_TEST_SUITE_P(Tiny, DecodePaged,
                         ::testing::ValuesIn(on_each_variant<ManyCase>(
                             {{"llama-mha", torch::kFloat32, ""}, {"llama-gqa", torch::kBFloat16, ""},
                              {"mla", torch::kBFloat16, ""}, {"mla", torch::kFloat32, "int4"},
                              {"llama-mha", torch::kFloat32, "int8"}, {"qwen2", torch::kFloat16, ""}})),
                         [](const auto& info) {
                           const auto& c = info.param.first;
                           std::string s = std::get<0>(c) + "_" + dtype_name(std::get<1>(c)) + "_" +
                                           (std::get<2>(c).empty() ? "float" : std::get<2>(c)) + "_" +
                                           kernels::variant_name(info.param.second);
                           for (auto& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace mha2mla::model
