// Partial-RoPE frequency selection: the fixed strategies against their definitions, 2-norm top-k and
// rank files, the group-summed scores (product vs sum rule), and clear errors on bad parameters.
#include <gtest/gtest.h>

#include "convert/calibrate.h"
#include "convert/rope_select.h"
#include "util/error.h"

using namespace mha2mla;
using namespace mha2mla::convert;

namespace {

using V = std::vector<int64_t>;

// The same set for every layer and KV head.
void expect_everywhere(const FreqSelection& sel, int64_t layers, int64_t n_kv, const V& want) {
  ASSERT_EQ(static_cast<int64_t>(sel.size()), layers);
  for (const auto& l : sel) {
    ASSERT_EQ(static_cast<int64_t>(l.size()), n_kv);
    for (const auto& h : l) EXPECT_EQ(h, want);
  }
}

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

TEST(RopeSelect, ParseAndNameRoundTrip) {
  for (const char* n : {"high", "low", "uniform", "2-norm"}) EXPECT_EQ(rope_strategy_name(parse_rope_strategy(n)), n);
  expect_error([] { parse_rope_strategy("2_norm"); }, "high, low, uniform or 2-norm");
  expect_error([] { parse_rope_strategy("middle"); }, "unknown partial-RoPE strategy \"middle\"");
}

TEST(RopeSelect, FixedStrategiesMatchDefinitions) {
  struct Case {
    int64_t d_h, r, start;
  };
  for (auto c : {Case{64, 8, 0}, Case{64, 8, 3}, Case{128, 16, 0}, Case{128, 16, 7}, Case{64, 2, 0}, Case{64, 64, 0},
                 Case{32, 4, 5}, Case{16, 16, 0}}) {
    const int64_t half = c.d_h / 2, keep = c.r / 2, step = c.d_h / c.r;
    V high, low, uni;
    for (int64_t k = 0; k < keep; ++k) {
      high.push_back(k);
      low.push_back(half - keep + k);
      uni.push_back(c.start + k * step);
    }
    SCOPED_TRACE("d_h=" + std::to_string(c.d_h) + " r=" + std::to_string(c.r) + " start=" + std::to_string(c.start));
    expect_everywhere(select_frequencies(RopeStrategy::High, c.r, c.d_h, 3, 2), 3, 2, high);
    expect_everywhere(select_frequencies(RopeStrategy::Low, c.r, c.d_h, 3, 2), 3, 2, low);
    expect_everywhere(select_frequencies(RopeStrategy::Uniform, c.r, c.d_h, 3, 2, c.start), 3, 2, uni);
  }
  // The documented examples: start0_step8 on d_h = 64 keeps frequencies {0, 8, 16, 24}.
  expect_everywhere(select_frequencies(RopeStrategy::Uniform, 8, 64, 1, 1, 0), 1, 1, V{0, 8, 16, 24});
  expect_everywhere(select_frequencies(RopeStrategy::Low, 16, 128, 1, 1), 1, 1, V{56, 57, 58, 59, 60, 61, 62, 63});
  expect_everywhere(select_frequencies(RopeStrategy::Uniform, 16, 128, 1, 1, 2), 1, 1,
                    V{2, 10, 18, 26, 34, 42, 50, 58});
}

TEST(RopeSelect, ValidationErrors) {
  expect_error([] { select_frequencies(RopeStrategy::High, 7, 64, 1, 1); }, "must be even");
  expect_error([] { select_frequencies(RopeStrategy::High, 0, 64, 1, 1); }, "at least 2");
  expect_error([] { select_frequencies(RopeStrategy::Low, -2, 64, 1, 1); }, "at least 2");
  expect_error([] { select_frequencies(RopeStrategy::High, 66, 64, 1, 1); }, "exceeds head_dim 64");
  expect_error([] { select_frequencies(RopeStrategy::Uniform, 8, 64, 1, 1, 8); }, "uniform start 8 must be in [0, 8)");
  expect_error([] { select_frequencies(RopeStrategy::Uniform, 8, 64, 1, 1, -1); }, "uniform start -1");
  // d_h/r = 64/12 = 5 does not divide the 32 frequencies.
  expect_error([] { select_frequencies(RopeStrategy::Uniform, 12, 64, 1, 1); }, "to divide head_dim/2 = 32");
  expect_error([] { select_frequencies(RopeStrategy::TwoNorm, 8, 64, 2, 2); }, "needs calibration scores");
  expect_error([] { select_frequencies(RopeStrategy::TwoNorm, 8, 64, 2, 2, 0, torch::zeros({2, 2, 16})); },
               "shape [2, 2, 16], the model needs [2, 2, 32]");
}

TEST(RopeSelect, TwoNormKeepsTopScoresPerLayerAndHeadTiesToLowerIndex) {
  // [layers=2, n_kv=2, d_h/2=4]
  auto scores = torch::tensor({5.f, 1.f, 3.f, 3.f,   //
                               0.f, 0.f, 0.f, 0.f,   // all tied: the lowest indices win
                               1.f, 2.f, 3.f, 4.f,   //
                               9.f, -1.f, 9.f, 2.f})
                    .reshape({2, 2, 4});
  auto sel = select_frequencies(RopeStrategy::TwoNorm, 4, 8, 2, 2, 0, scores);
  EXPECT_EQ(sel[0][0], (V{0, 2}));
  EXPECT_EQ(sel[0][1], (V{0, 1}));
  EXPECT_EQ(sel[1][0], (V{2, 3}));
  EXPECT_EQ(sel[1][1], (V{0, 2}));
  auto one = select_frequencies(RopeStrategy::TwoNorm, 2, 8, 2, 2, 0, scores);
  EXPECT_EQ(one[0][0], (V{0}));
  EXPECT_EQ(one[1][0], (V{3}));

  auto ranks = ranks_from_scores(scores);
  ASSERT_EQ(ranks.sizes(), (std::vector<int64_t>{2, 2, 8}));
  EXPECT_EQ(ranks.scalar_type(), torch::kInt64);
  auto row = [&](int64_t l, int64_t h) {
    auto t = ranks[l][h].contiguous();
    return V(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  EXPECT_EQ(row(0, 0), (V{0, 3, 1, 2, 0, 3, 1, 2}));
  EXPECT_EQ(row(0, 1), (V{0, 1, 2, 3, 0, 1, 2, 3}));
  EXPECT_EQ(row(1, 0), (V{3, 2, 1, 0, 3, 2, 1, 0}));
  EXPECT_EQ(row(1, 1), (V{0, 3, 1, 2, 0, 3, 1, 2}));
  // keep = rank < r/2 reproduces the selection, for every r.
  for (int64_t r = 2; r <= 8; r += 2) {
    auto s = select_frequencies(RopeStrategy::TwoNorm, r, 8, 2, 2, 0, scores);
    for (int64_t l = 0; l < 2; ++l)
      for (int64_t h = 0; h < 2; ++h) {
        V from_ranks;
        for (int64_t i = 0; i < 4; ++i)
          if (row(l, h)[i] < r / 2) from_ranks.push_back(i);
        EXPECT_EQ(s[l][h], from_ranks) << "r=" << r << " l=" << l << " h=" << h;
      }
  }
}

TEST(RopeSelect, ProductAndSumRulesSumOverTheQueryGroup) {
  // 1 layer, 2 query heads sharing 1 KV head, 4 frequencies.
  CalibStats s;
  s.q_norm = torch::tensor({1.f, 4.f, 2.f, 3.f, 1.f, 4.f, 2.f, 3.f}).reshape({1, 2, 4});
  s.k_norm = torch::tensor({10.f, 1.f, 3.f, 2.f}).reshape({1, 1, 4});
  auto prod = two_norm_scores(s, 1, true), sum = two_norm_scores(s, 1, false);
  // Σ_j q̄·k̄ = [20, 8, 12, 12]; Σ_j (q̄ + k̄) = [22, 10, 10, 10].
  EXPECT_TRUE(torch::equal(prod, torch::tensor({20.f, 8.f, 12.f, 12.f}).reshape({1, 1, 4})));
  EXPECT_TRUE(torch::equal(sum, torch::tensor({22.f, 10.f, 10.f, 10.f}).reshape({1, 1, 4})));
  // The two rules keep different pairs: {0, 2} against {0, 1}.
  EXPECT_EQ(select_frequencies(RopeStrategy::TwoNorm, 4, 8, 1, 1, 0, prod)[0][0], (V{0, 2}));
  EXPECT_EQ(select_frequencies(RopeStrategy::TwoNorm, 4, 8, 1, 1, 0, sum)[0][0], (V{0, 1}));

  // GQA: 2 layers, 6 query heads in 2 groups of 3; query head j pairs with KV head j / 3.
  auto gen = at::detail::createCPUGenerator(4);
  s.q_norm = at::rand({2, 6, 5}, gen);
  s.k_norm = at::rand({2, 2, 5}, gen);
  auto p = two_norm_scores(s, 2, true), q = two_norm_scores(s, 2, false);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{2, 2, 5}));
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 5; ++i) {
        double wp = 0, ws = 0;
        for (int64_t j = 3 * h; j < 3 * h + 3; ++j) {
          wp += s.q_norm[l][j][i].item<double>() * s.k_norm[l][h][i].item<double>();
          ws += s.q_norm[l][j][i].item<double>() + s.k_norm[l][h][i].item<double>();
        }
        EXPECT_NEAR(p[l][h][i].item<double>(), wp, 1e-6);
        EXPECT_NEAR(q[l][h][i].item<double>(), ws, 1e-6);
      }
  expect_error([&] { two_norm_scores(s, 4, true); }, "not a multiple of KV heads 4");
  expect_error([&] { two_norm_scores(s, 3, true); }, "k norms have shape [2, 2, 5], expected [2, 3, 5]");
}

TEST(RopeSelect, RopeAndNopeDimsPartitionTheHead) {
  EXPECT_EQ(rope_dims({5, 1}, 16), (V{1, 5, 9, 13}));
  EXPECT_EQ(nope_dims({5, 1}, 16), (V{0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15}));
  EXPECT_EQ(rope_dims({0, 1, 2, 3}, 8), (V{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_TRUE(nope_dims({0, 1, 2, 3}, 8).empty());
  expect_error([] { rope_dims({8}, 16); }, "out of range");
  expect_error([] { rope_dims({2, 2}, 16); }, "listed twice");
}

}  // namespace
