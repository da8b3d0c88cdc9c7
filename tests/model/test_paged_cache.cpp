// The paged cache (model/paged_cache.h) and its kernels (kernels/paged_attention.h): sequences whose tokens go
// through a KVCache (prefill) and then token by token into scattered blocks of a pool are read back exactly as the
// KVCache holds them, and every kernel variant attends over them as the libtorch reference attends over the
// KVCache's own contents, for every cache type, GQA and absorbed MLA; a sequence's result does not depend on the
// others in its batch; blocks are reused.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_cases.h"
#include "kernels/paged_attention.h"
#include "kernels/quant_attention.h"
#include "kernels/variants.h"
#include "model/attention.h"
#include "model/paged_cache.h"
#include "util/error.h"

namespace mha2mla::model {
namespace {

constexpr int64_t kBlock = 16;

// f32 [1, H, S, W]: what a KVCache buffer holds, as the kernels read it (codes dequantized in f32).
torch::Tensor held(const SlotBuffer& b) {
  if (is_quantized(b.storage().type) && b.quantized_tokens() == 0) return b.residual_view().to(torch::kFloat32);
  return kernels::dequantize_reference(quantized_kv(b)).to(torch::kFloat32);
}

struct PagedCase {
  bool mla;
  std::string cache_type;  // "" = the compute dtype
  torch::ScalarType dtype;
  int64_t window;
};

std::string case_name(const PagedCase& c) {
  std::string s = std::string(c.mla ? "mla" : "gqa") + "_" + (c.cache_type.empty() ? "float" : c.cache_type) + "_" +
                  (c.dtype == torch::kFloat32 ? "f32" : c.dtype == torch::kBFloat16 ? "bf16" : "f16") +
                  (c.window ? "_window" : "");
  for (auto& ch : s)
    if (ch == '-') ch = '_';
  return s;
}

// Three sequences (lengths 5, 37, 70) in a pool of 16-token blocks taken out of order: the prompt (all but the last
// token) prefilled into a KVCache and loaded, then the last token appended to the blocks, as the server does; the
// same tokens in one KVCache per sequence as the reference.
struct Fixture {
  std::vector<BufferSpec> specs;
  CacheOptions co;
  std::unique_ptr<BlockPool> pool;
  std::vector<std::unique_ptr<PagedSequence>> seqs;
  std::vector<std::unique_ptr<KVCache>> ref;
  std::vector<int64_t> lengths = {5, 37, 70};

  Fixture(const PagedCase& c, int64_t Hkv, int64_t D, int64_t L, int64_t r) {
    specs = c.mla ? std::vector<BufferSpec>{{"c", 1, L, QuantAxis::Token, BufferRole::Latent},
                                            {"k_r", Hkv, r, QuantAxis::Channel, BufferRole::RotaryKey}}
                  : std::vector<BufferSpec>{{"k", Hkv, D, QuantAxis::Channel, BufferRole::Key},
                                            {"v", Hkv, D, QuantAxis::Token, BufferRole::Value}};
    if (!c.cache_type.empty()) co.type = parse_cache_type(c.cache_type);
    co.residual = 16, co.group = 8;
    const std::vector<std::vector<BufferSpec>> layers{specs};
    pool = std::make_unique<BlockPool>(layers, co, c.dtype, torch::kCPU, 24, kBlock);
    auto gen = at::detail::createCPUGenerator(7);
    auto hold = std::make_unique<PagedSequence>(*pool, 3);  // freed after the first sequence: the blocks scatter
    for (size_t s = 0; s < lengths.size(); ++s) {
      const int64_t n = lengths[s], P = n - 1;
      seqs.push_back(std::make_unique<PagedSequence>(*pool, (n + kBlock - 1) / kBlock));
      if (s == 0) hold.reset();
      ref.push_back(std::make_unique<KVCache>(1, layers, co, c.dtype, torch::kCPU));
      KVCache prefill(1, layers, co, c.dtype, torch::kCPU);
      ref.back()->begin_step(torch::ones({1, n}, torch::kBool));
      prefill.begin_step(torch::ones({1, P}, torch::kBool));
      std::vector<torch::Tensor> xs;
      for (const auto& spec : specs) {
        xs.push_back(at::normal(0.0, 1.0, {1, spec.heads, n, spec.width}, gen).to(c.dtype));
        ref.back()->buffer(0, xs.size() - 1).append(xs.back());
        prefill.buffer(0, xs.size() - 1).append(xs.back().narrow(2, 0, P));
      }
      ref.back()->end_step(n);
      prefill.end_step(P);
      seqs.back()->load(prefill);
      for (size_t i = 0; i < xs.size(); ++i) seqs.back()->append(0, i, xs[i].narrow(2, P, 1));
    }
  }
  std::vector<kernels::PagedSeq> views() const {
    std::vector<kernels::PagedSeq> v;
    for (const auto& s : seqs) v.push_back(s->view(0));
    return v;
  }
};

class PagedAttention : public ::testing::TestWithParam<std::pair<PagedCase, kernels::Variant>> {};

TEST_P(PagedAttention, EqualsTheReferenceOverTheSameTokensAndEachSequenceAlone) {
  const auto& c = GetParam().first;
  const auto variant = GetParam().second;
  const int64_t Hq = 6, Hkv = 2, D = 16, L = 24, r = 8;
  Fixture f(c, Hkv, D, L, r);
  const auto views = f.views();
  // The blocks hold what the KVCache holds, slot for slot.
  for (size_t s = 0; s < f.seqs.size(); ++s)
    for (size_t i = 0; i < 2; ++i)
      ASSERT_TRUE(torch::equal(kernels::paged_gather(f.pool->buffer(0, i), views[s], static_cast<int>(i), kBlock),
                               held(f.ref[s]->layer(0)[i])))
          << "sequence " << s << " buffer " << i;
  const auto B = static_cast<int64_t>(f.seqs.size());
  auto gen = at::detail::createCPUGenerator(11);
  const double scale = 0.3;
  auto q1 = at::normal(0.0, 1.0, {B, Hq, 1, c.mla ? L : D}, gen).to(c.dtype);
  auto q2 = at::normal(0.0, 1.0, {B, Hq, 1, r}, gen).to(c.dtype);
  auto run = [&](const torch::Tensor& a, const torch::Tensor& b, const std::vector<kernels::PagedSeq>& v) {
    return c.mla ? kernels::paged_mla_decode_attention(a, b, f.pool->buffer(0, 0), f.pool->buffer(0, 1), v, kBlock,
                                                       c.window, scale, variant)
                 : kernels::paged_decode_attention(a, f.pool->buffer(0, 0), f.pool->buffer(0, 1), v, kBlock, c.window,
                                                   scale, variant);
  };
  auto got = run(q1, q2, views);
  EXPECT_STREQ(kernels::last_decode_kernel(), variant == kernels::Variant::Reference ? "reference" : "cpu");
  for (int64_t s = 0; s < B; ++s) {
    const auto& kc = *f.ref[static_cast<size_t>(s)];
    auto a = q1.narrow(0, s, 1).to(torch::kFloat32), b = q2.narrow(0, s, 1).to(torch::kFloat32);
    const int64_t pos = f.lengths[static_cast<size_t>(s)] - 1;
    auto want = c.mla ? kernels::mla_decode_reference(a, b, held(kc.layer(0)[0]).select(1, 0), held(kc.layer(0)[1]),
                                                      pos, {}, c.window, scale)
                      : kernels::attention_reference(a, held(kc.layer(0)[0]), held(kc.layer(0)[1]), pos, {}, c.window,
                                                     scale);
    testutil::expect_close(got.narrow(0, s, 1), want.to(c.dtype), testutil::tol_for(c.dtype),
                           case_name(c) + " sequence " + std::to_string(s));
    // Alone: the same bits as in the batch.
    auto alone = run(q1.narrow(0, s, 1), q2.narrow(0, s, 1), {views[static_cast<size_t>(s)]});
    EXPECT_TRUE(torch::equal(alone, got.narrow(0, s, 1))) << "sequence " << s;
  }
}

std::vector<std::pair<PagedCase, kernels::Variant>> paged_cases() {
  std::vector<PagedCase> cases;
  for (bool mla : {false, true}) {
    for (const char* t : {"", "bf16", "f16", "int8", "int4", "int2", "fp8"}) cases.push_back({mla, t, torch::kFloat32, 0});
    cases.push_back({mla, "", torch::kBFloat16, 0});
    cases.push_back({mla, "int4", torch::kBFloat16, 0});
    cases.push_back({mla, "", torch::kFloat32, 20});
    cases.push_back({mla, "int4", torch::kFloat32, 20});
  }
  cases.push_back({true, "fp8-flashmla", torch::kBFloat16, 0});
  std::vector<std::pair<PagedCase, kernels::Variant>> out;
  for (const auto& c : cases) {
    out.emplace_back(c, kernels::Variant::Reference);
    for (auto v : testutil::cpu_variants()) out.emplace_back(c, v);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cache, PagedAttention, ::testing::ValuesIn(paged_cases()), [](const auto& info) {
  return case_name(info.param.first) + "_" + kernels::variant_name(info.param.second);
});

TEST(BlockPool, BlocksAreTakenGivenBackAndReused) {
  const std::vector<std::vector<BufferSpec>> layers(2, {{"k", 2, 8, QuantAxis::Channel, BufferRole::Key},
                                                         {"v", 2, 8, QuantAxis::Token, BufferRole::Value}});
  CacheOptions co;
  co.type = CacheType::Int4, co.group = 8, co.residual = 16;
  BlockPool pool(layers, co, torch::kFloat32, torch::kCPU, 10, kBlock);
  // Per block: codes, then f16 scales and zeros (per channel: 2 rows of 8 channels per block for k).
  const int64_t k_bytes = 2 * kBlock * 4 + 2 * 2 * (kBlock / 8) * 8 * 2;
  const int64_t v_bytes = 2 * kBlock * 4 + 2 * 2 * kBlock * 1 * 2;
  EXPECT_EQ(pool.block_bytes(), 2 * (k_bytes + v_bytes));
  EXPECT_EQ(pool.free_blocks(), 10);
  std::vector<int32_t> first;
  {
    PagedSequence a(pool, 4), b(pool, 5);
    EXPECT_EQ(pool.free_blocks(), 1);
    EXPECT_THROW(PagedSequence(pool, 2), Error);  // one block left
    first = a.blocks();
    for (auto id : b.blocks()) EXPECT_EQ(std::count(first.begin(), first.end(), id), 0);
    EXPECT_EQ(a.capacity(), 4 * kBlock);
  }
  EXPECT_EQ(pool.free_blocks(), 10);  // both ended: every block back
  PagedSequence c(pool, 10);
  auto ids = c.blocks();
  std::sort(ids.begin(), ids.end());
  for (int32_t i = 0; i < 10; ++i) EXPECT_EQ(ids[static_cast<size_t>(i)], i);
  // A per-channel group must divide the block.
  co.group = 12;
  co.residual = 24;
  EXPECT_THROW(BlockPool(layers, co, torch::kFloat32, torch::kCPU, 4, kBlock), Error);
}

TEST(BlockPool, ASequenceCannotOutgrowItsBlocks) {
  const std::vector<std::vector<BufferSpec>> layers(1, {{"k", 1, 4, QuantAxis::Channel, BufferRole::Key},
                                                         {"v", 1, 4, QuantAxis::Token, BufferRole::Value}});
  BlockPool pool(layers, CacheOptions{}, torch::kFloat32, torch::kCPU, 4, kBlock);
  PagedSequence s(pool, 1);
  for (int64_t t = 0; t < kBlock; ++t) {
    s.append(0, 0, torch::ones({1, 1, 1, 4}));
    s.append(0, 1, torch::ones({1, 1, 1, 4}));
    s.end_step();
  }
  EXPECT_THROW(s.append(0, 0, torch::ones({1, 1, 1, 4})), Error);
}

}  // namespace
}  // namespace mha2mla::model
