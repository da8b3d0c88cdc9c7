// Perplexity through the cache: with a full-precision cache and any chunk size it equals plain perplexity;
// quantized caches move it, int2 more than int8.
#include <gtest/gtest.h>

#include "eval/perplexity.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"

using namespace mha2mla;

TEST(PerplexityThroughCache, FullPrecisionEqualsPlainForAnyChunk) {
  auto m = testutil::make_random_model(testutil::tiny_config("llama-gqa"), 21);
  std::vector<int64_t> ids;
  for (int i = 0; i < 300; ++i) ids.push_back((i * 53 + 7) % 97);
  const auto plain = eval::perplexity(*m, ids, eval::PplOptions{100, 40, 0});
  for (int64_t chunk : {1, 7, 64, 100, 1000}) {
    const auto r = eval::perplexity(*m, ids, eval::PplOptions{100, 40, chunk});
    EXPECT_NEAR(r.ppl / plain.ppl, 1.0, 1e-4) << "chunk " << chunk;
    EXPECT_EQ(r.tokens, plain.tokens);
    EXPECT_EQ(r.cache.tokens, 100);  // the last window's cache
  }
}

TEST(PerplexityThroughCache, QuantizedCachesDegradeWithFewerBits) {
  auto m = testutil::make_random_model(testutil::tiny_config("llama-mha"), 22);
  std::vector<int64_t> ids;
  for (int i = 0; i < 200; ++i) ids.push_back((i * 31 + 3) % 97);
  const double plain = eval::perplexity(*m, ids, eval::PplOptions{100, 50, 0}).nll;
  std::vector<double> gap;
  for (const char* t : {"int8", "int4", "int2"}) {
    model::CacheOptions o;
    o.type = model::parse_cache_type(t);
    o.residual = 16;
    o.group = 16;
    m->set_cache_options(o);
    const auto r = eval::perplexity(*m, ids, eval::PplOptions{100, 50, 16});
    gap.push_back(std::fabs(r.nll - plain));
    EXPECT_EQ(r.cache.residual_tokens, 100 % 16) << t;
  }
  EXPECT_GT(gap[0], 0.0);
  EXPECT_LT(gap[0], gap[1]);
  EXPECT_LT(gap[1], gap[2]);
}
