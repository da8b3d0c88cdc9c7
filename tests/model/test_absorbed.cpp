// Absorbed MLA decoding against the materialising reference: the same logits at every position of a
// 300-token greedy generation, for MHA-, GQA- and qwen2-sourced models, joint and split latents.
#include <gtest/gtest.h>

#include <filesystem>

#include "convert/mla_convert.h"
#include "infer/generate.h"
#include "model/mla_attention.h"
#include "model/transformer.h"
#include "testing/mla_model.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

std::string converted(const std::string& kind, const std::string& svd, uint64_t seed, int64_t dkv = 6) {
  auto cfg = testutil::tiny_config(kind);
  cfg["max_position_embeddings"] = 512;
  auto base = testutil::temp_dir("absorb-" + kind + "-" + svd + "-" + std::to_string(dkv));
  testutil::convert_tiny_mla(cfg, seed, base, svd, dkv);
  return base;
}

// Logits [T, V] of feeding `ids` one token at a time after a prompt of `prompt` tokens.
torch::Tensor stepwise_logits(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t prompt) {
  torch::NoGradGuard ng;
  auto all = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  auto cache = m.make_cache(1);
  std::vector<torch::Tensor> out{m.forward(all.narrow(1, 0, prompt), cache.get())[0]};
  for (int64_t t = prompt; t < all.size(1); ++t) out.push_back(m.forward(all.narrow(1, t, 1), cache.get())[0]);
  return torch::cat(out, 0);
}

}  // namespace

class Absorbed : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Absorbed, EqualsMaterializedOverA300TokenGeneration) {
  auto [kind, svd] = GetParam();
  auto base = converted(kind, svd, 11);
  auto m = model::load_model(base + "/mla", torch::kFloat32);
  m->set_attn_mode(model::AttnMode::Materialize);
  std::vector<int64_t> prompt{1, 5, 17, 33, 8, 60, 2, 44};
  infer::GenerateOptions g;
  g.max_new = 300;
  auto gen = infer::generate(*m, {prompt}, g)[0];
  ASSERT_EQ(gen.size(), 300u);
  std::vector<int64_t> ids = prompt;
  ids.insert(ids.end(), gen.begin(), gen.end() - 1);
  auto ref = stepwise_logits(*m, ids, 8);
  m->set_attn_mode(model::AttnMode::Absorbed);
  auto abs = stepwise_logits(*m, ids, 8);
  EXPECT_LE((abs - ref).abs().max().item<double>(), 1e-4);
  // And the greedy tokens agree.
  auto gen2 = infer::generate(*m, {prompt}, g)[0];
  EXPECT_EQ(gen2, gen);
  fs::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(Model, Absorbed,
                         ::testing::Combine(::testing::Values("llama-mha", "llama-gqa", "qwen2"),
                                            ::testing::Values("joint", "split")),
                         [](const auto& info) {
                           auto s = std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// The absorbed path drops the key bias and adds the value bias. Show both instead of assuming them:
// the key bias is really there (so dropping it is tested) and shifts every score of a query by the same
// amount; zeroing the value bias changes the absorbed output.
TEST(Absorbed, KeyBiasCancelsInSoftmaxAndValueBiasDoesNot) {
  auto base = converted("qwen2", "joint", 12);
  auto m = model::load_model(base + "/mla", torch::kFloat32);
  auto& attn = dynamic_cast<model::MLAAttentionImpl&>(*m->model->layers->at<model::DecoderLayerImpl>(0).self_attn);
  ASSERT_TRUE(attn.kv_proj->up_k->bias.defined());
  ASSERT_GT(attn.kv_proj->up_k->bias.abs().max().item<double>(), 1e-3);
  torch::NoGradGuard ng;
  std::vector<int64_t> ids{1, 9, 30, 4, 77, 12, 50, 3, 3, 21};
  m->set_attn_mode(model::AttnMode::Materialize);
  auto ref = stepwise_logits(*m, ids, 4);
  // Scores with and without b_k differ by one constant per query: q_nope · b_k.
  {
    auto c = torch::randn({1, 7, attn.kv_proj->latent_dim()});
    auto q_c = torch::randn({attn.kv_proj->up_k->weight.size(0)});
    auto with = torch::matmul(attn.kv_proj->up_k(c), q_c);
    auto without = torch::matmul(torch::linear(c, attn.kv_proj->up_k->weight), q_c);
    auto shift = with - without;
    EXPECT_LE((shift - shift[0][0]).abs().max().item<double>(), 1e-4);
    EXPECT_GT(shift.abs().max().item<double>(), 1e-3);
  }
  m->set_attn_mode(model::AttnMode::Absorbed);
  EXPECT_LE((stepwise_logits(*m, ids, 4) - ref).abs().max().item<double>(), 1e-4);
  attn.kv_proj->up_v->bias.zero_();
  EXPECT_GT((stepwise_logits(*m, ids, 4) - ref).abs().max().item<double>(), 1e-3);
  fs::remove_all(base);
}

// --attn auto picks absorbed for single-token decoding and materialises long prefill chunks; both agree.
TEST(Absorbed, AutoAgreesWithBothPaths) {
  auto base = converted("llama-gqa", "joint", 13);
  auto m = model::load_model(base + "/mla", torch::kFloat32);
  std::vector<int64_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 37 + 5) % 97);
  m->set_attn_mode(model::AttnMode::Materialize);
  auto ref = stepwise_logits(*m, ids, 20);
  m->set_attn_mode(model::AttnMode::Auto);
  EXPECT_LE((stepwise_logits(*m, ids, 20) - ref).abs().max().item<double>(), 1e-4);
  fs::remove_all(base);
}

// Over a quantized cache, absorbed decoding reads the blocks in place (the fused kernel dequantizes in
// registers); the reference path dequantizes the whole cache every step. Same cache contents, so the same
// logits up to summation order, for joint and split latents, with blocks handed over every 16 tokens.
// FP8 latents too: fp8 (E4M3 c and k_r), fp8-flashmla (E4M3 c in groups of 128, k_r in bf16, which an f32 model
// dequantizes), and an E4M3 latent beside f32 rotary keys, which the kernel reads in place as a float buffer.
TEST(Absorbed, QuantizedCacheReadInPlaceEqualsDequantizedReference) {
  using model::CacheType;
  const std::vector<std::pair<CacheType, CacheType>> types = {{CacheType::Int4, CacheType::Int4},
                                                              {CacheType::Fp8, CacheType::Fp8},
                                                              {CacheType::Fp8FlashMla, CacheType::BF16},
                                                              {CacheType::Fp8, CacheType::F32}};
  for (const std::string svd : {"joint", "split"}) {
    auto base = converted("llama-gqa", svd, 13);
    for (auto [type, kr] : types) {
      auto m = model::load_model(base + "/mla", torch::kFloat32);
      m->set_attn_mode(model::AttnMode::Absorbed);
      model::CacheOptions co;
      co.type = type;
      if (kr != type) co.type_of["k_r"] = kr;
      co.residual = 16;
      co.group = 16;
      std::vector<int64_t> ids;
      for (int64_t i = 0; i < 120; ++i) ids.push_back((i * 37 + 5) % 90 + 1);
      auto run = [&](bool reference) {
        torch::NoGradGuard ng;
        m->set_reference_attention(reference);
        auto all = torch::tensor(ids, torch::kInt64).unsqueeze(0);
        auto cache = m->make_cache(1, co);
        std::vector<torch::Tensor> out{m->forward(all.narrow(1, 0, 8), cache.get())[0]};
        for (int64_t t = 8; t < all.size(1); ++t)
          out.push_back(m->forward(all.narrow(1, t, 1), cache.get())[0]);
        EXPECT_EQ(cache->layer(0)[0].quantized_tokens(), 120 / co.residual * co.residual) << svd;  // blocks handed over
        return torch::cat(out, 0);
      };
      auto fused = run(false), ref = run(true);
      // The kernel dequantizes with one fused multiply-add, the reference with a multiply and an add: values
      // differ in the last bit, which four layers grow to ~1e-5 of the logits' scale.
      const double scale = ref.abs().max().item<double>();
      EXPECT_LE((fused - ref).abs().max().item<double>(), 1e-4 * scale)
          << svd << " " << model::cache_type_name(type) << " logit scale " << scale;
      EXPECT_GT(scale, 0.1) << svd;
      // Not vacuous: quantizing other blocks (residual 32) moves the logits by far more than the tolerance.
      co.residual = 32;
      EXPECT_GT((run(true) - ref).abs().max().item<double>(), 1e-3 * scale)
          << svd << " " << model::cache_type_name(type);
    }
    fs::remove_all(base);
  }
}

// Folded weights (W_uk in the query projection, W_uv in the output projection, built once) give the logits of
// the per-step products, for joint and split latents, with and without biases; a weight changed in place
// (as fine-tuning does) is picked up, not served stale.
TEST(Absorbed, FoldedWeightsEqualMaterializedAndFollowWeightChanges) {
  for (const std::string kind : {"llama-mha", "qwen2"})
    for (const std::string svd : {"joint", "split"}) {
      auto base = converted(kind, svd, 14, kind == "llama-mha" ? 1 : 2);
      auto m = model::load_model(base + "/mla", torch::kFloat32);
      auto& attn = dynamic_cast<model::MLAAttentionImpl&>(*m->model->layers->at<model::DecoderLayerImpl>(0).self_attn);
      ASSERT_TRUE(attn.folds_weights()) << kind << " " << svd << " latent " << attn.kv_proj->latent_dim();
      std::vector<int64_t> ids;
      for (int i = 0; i < 30; ++i) ids.push_back((i * 41 + 3) % 97);
      m->set_attn_mode(model::AttnMode::Materialize);
      auto ref = stepwise_logits(*m, ids, 6);
      m->set_attn_mode(model::AttnMode::Absorbed);
      EXPECT_LE((stepwise_logits(*m, ids, 6) - ref).abs().max().item<double>(), 1e-4) << kind << " " << svd;
      {
        torch::NoGradGuard ng;
        attn.o_proj->weight.mul_(0.5);
        attn.q_proj->weight.add_(0.05);
      }
      m->set_attn_mode(model::AttnMode::Materialize);
      auto ref2 = stepwise_logits(*m, ids, 6);
      ASSERT_GT((ref2 - ref).abs().max().item<double>(), 1e-3);
      m->set_attn_mode(model::AttnMode::Absorbed);
      EXPECT_LE((stepwise_logits(*m, ids, 6) - ref2).abs().max().item<double>(), 1e-4) << kind << " " << svd;
      fs::remove_all(base);
    }
}
