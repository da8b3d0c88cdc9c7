// Calibrating in bf16 instead of f32 on the shipped models: the statistics are accumulated in fp64 either way,
// so only the forward pass's rounding differs. The 2-norm selection must agree on nearly every head and the
// covariances must stay close; the measured differences are recorded as test properties and printed.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "convert/calibrate.h"
#include "convert/rope_select.h"
#include "model/transformer.h"
#include "testing/files.h"
#include "tokenizer/tokenizer.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

// In-domain text when Debian's bible-kjv is there (scripts/setup.sh installs it), else the README.
std::string calibration_text(const std::string& dir) {
  const std::string out = dir + "/calib.txt";
  if (std::system(("command -v bible >/dev/null && bible -f 'Gen1:1-Gen15:21' | sed 's/^[^ ]* //' >" + out).c_str()) == 0 &&
      fs::file_size(out) > 20000)
    return out;
  return MHA2MLA_SOURCE_DIR "/README.md";
}

class CalibDtype : public ::testing::TestWithParam<std::string> {};

TEST_P(CalibDtype, Bf16AgreesWithF32) {
  const std::string model_dir = std::string(MHA2MLA_SOURCE_DIR) + "/models/" + GetParam();
  auto dir = testutil::temp_dir("calib-dtype-" + GetParam());
  auto ids = tok::encode_text_file(tok::Tokenizer::load(model_dir), calibration_text(dir));
  const int64_t ctx = 512, samples = 8;
  ASSERT_GE(static_cast<int64_t>(ids.size()), samples * ctx);

  auto m32 = model::load_model(model_dir, torch::kFloat32);
  auto m16 = model::load_model(model_dir, torch::kBFloat16);
  auto a = convert::calibrate(*m32, ids, samples, ctx);
  auto b = convert::calibrate(*m16, ids, samples, ctx);
  const auto& c = m32->config();
  ASSERT_EQ(b.q_norm.scalar_type(), torch::kFloat32);
  ASSERT_EQ(b.cov[0].scalar_type(), torch::kFloat64);

  // 2-norm selection as the demo uses it (r = 8: 4 of 32 pairs per KV head).
  const int64_t r = 8;
  auto sa = convert::select_frequencies(convert::RopeStrategy::TwoNorm, r, c.head_dim, c.num_layers, c.num_kv_heads, 0,
                                        convert::two_norm_scores(a, c.num_kv_heads));
  auto sb = convert::select_frequencies(convert::RopeStrategy::TwoNorm, r, c.head_dim, c.num_layers, c.num_kv_heads, 0,
                                        convert::two_norm_scores(b, c.num_kv_heads));
  int64_t heads = 0, same_heads = 0, kept = 0, same_kept = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      std::set<int64_t> x(sa[l][h].begin(), sa[l][h].end()), y(sb[l][h].begin(), sb[l][h].end());
      ++heads;
      same_heads += x == y;
      for (auto f : x) {
        ++kept;
        same_kept += y.count(f);
      }
    }
  double cov_max = 0, qn_max = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const double d = ((b.cov[l] - a.cov[l]).norm() / a.cov[l].norm()).item<double>();
    cov_max = std::max(cov_max, d);
  }
  qn_max = ((b.q_norm - a.q_norm).abs() / a.q_norm.abs().clamp_min(1e-12)).max().item<double>();
  const double kn_max = ((b.k_norm - a.k_norm).abs() / a.k_norm.abs().clamp_min(1e-12)).max().item<double>();
  std::printf("%s, %lld tokens: same 2-norm selection on %lld/%lld KV heads, %lld/%lld kept frequencies shared; "
              "covariance relative Frobenius difference max %.2e; q/k norm relative difference max %.2e / %.2e\n",
              GetParam().c_str(), static_cast<long long>(a.tokens), static_cast<long long>(same_heads),
              static_cast<long long>(heads), static_cast<long long>(same_kept), static_cast<long long>(kept), cov_max,
              qn_max, kn_max);
  RecordProperty("same_heads", std::to_string(same_heads) + "/" + std::to_string(heads));
  RecordProperty("cov_rel_diff_max", std::to_string(cov_max));
  EXPECT_GE(same_heads * 10, heads * 9);  // identical sets on at least 90% of the heads
  EXPECT_GE(same_kept * 100, kept * 97);  // and 97% of the kept frequencies
  EXPECT_LT(cov_max, 0.05);
  EXPECT_LT(qn_max, 0.05);
  EXPECT_GT(cov_max, 0.0);  // bf16 did run: the forward pass rounds differently
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Shipped, CalibDtype, ::testing::Values("kjv-mha", "kjv-gqa"),
                         [](const auto& info) { return info.param == "kjv-mha" ? std::string("mha") : std::string("gqa"); });

}  // namespace
