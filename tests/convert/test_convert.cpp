// MHA -> MLA conversion: exactness at full rank, partial RoPE against an independent reference,
// SVD truncation error, the latent cache, and bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/lowrank.h"
#include "convert/mla_convert.h"
#include "infer/generate.h"
#include "io/safetensors.h"
#include "model/mla_attention.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"
#include "util/error.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

using testutil::expect_error;

torch::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, vocab, {b, t}, gen, torch::kInt64);
}

std::string saved_model(const std::string& kind, uint64_t seed) {
  auto dir = testutil::temp_dir("src-" + kind + "-" + std::to_string(seed));
  auto m = testutil::make_random_model(testutil::tiny_config(kind), seed);
  model::save_model(*m, dir);
  return dir;
}

convert::ConvertOptions opts(const std::string& rope, int64_t r, const std::string& svd, int64_t dkv) {
  convert::ConvertOptions o;
  o.rope = convert::parse_rope_strategy(rope);
  o.rope_dims = r;
  o.svd = svd;
  o.dkv = dkv;
  o.algo = convert::SvdAlgo::Exact;
  return o;
}

double max_logit_diff(const std::string& a, const std::string& b, const torch::Tensor& ids) {
  torch::NoGradGuard ng;
  auto ma = model::load_model(a, torch::kFloat32);
  auto mb = model::load_model(b, torch::kFloat32);
  return (ma->forward(ids) - mb->forward(ids)).abs().max().item<double>();
}

class ConvertArch : public ::testing::TestWithParam<std::string> {};

TEST_P(ConvertArch, AllRopeFullRankIsExact) {
  auto src = saved_model(GetParam(), 5);
  auto out = testutil::temp_dir("mla-full") + "/out";
  const int64_t d_h = 16;  // tiny configs
  auto rep = convert::convert_model(src, out, opts("high", d_h, "joint", d_h), "");
  EXPECT_NEAR(rep["kv_cache_ratio"].get<double>(), 1.0, 1e-12);
  auto ids = random_ids(2, 30, 97, 1);
  EXPECT_LE(max_logit_diff(src, out, ids), 1e-4);
  // The converted folder loads and reports an MLA config.
  auto cfg = io::ModelConfig::load(out);
  EXPECT_TRUE(cfg.is_mla);
  EXPECT_EQ(cfg.mla.freqs.size(), 2u);
  fs::remove_all(src);
  fs::remove_all(fs::path(out).parent_path());
}

TEST_P(ConvertArch, PartialRopeMatchesIndependentReference) {
  MHA2MLA_REQUIRE_ORACLE(testutil::python_has_torch(), "Debian python3 with torch not found");
  auto src = saved_model(GetParam(), 8);
  auto base = testutil::temp_dir("mla-partial");
  for (const char* strategy : {"high", "low", "uniform"}) {
    auto out = base + "/" + strategy;
    convert::convert_model(src, out, opts(strategy, 4, "none", 0), "");
    auto cfg = io::ModelConfig::load(out);
    std::ofstream(base + "/freqs.json") << nlohmann::json(cfg.mla.freqs).dump();
    auto ids = random_ids(2, 25, 97, 2);
    std::ofstream f(base + "/ids.json");
    nlohmann::json j = nlohmann::json::array();
    for (int64_t b = 0; b < 2; ++b) {
      std::vector<int64_t> row(ids[b].data_ptr<int64_t>(), ids[b].data_ptr<int64_t>() + 25);
      j.push_back(row);
    }
    f << j.dump();
    f.close();
    std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/torch_ref.py --threads 2 --model " +
                      src + " --ids " + base + "/ids.json --out " + base + "/ref.safetensors --partial-rope " + base +
                      "/freqs.json";
    ASSERT_EQ(testutil::run(cmd), 0) << cmd;
    auto ref = io::SafetensorsFile(base + "/ref.safetensors").tensor("logits");
    torch::NoGradGuard ng;
    auto ours = model::load_model(out, torch::kFloat32)->forward(ids);
    EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-4) << strategy;
    // Partial RoPE really changes the model (the check above is not trivially true).
    auto orig = model::load_model(src, torch::kFloat32)->forward(ids);
    EXPECT_GT((ours - orig).abs().max().item<double>(), 1e-3) << strategy;
    // A full-rank joint latent reproduces the partial-RoPE model exactly.
    if (std::string(strategy) == "high") {
      const int64_t n_kv = io::ModelConfig::load(src).num_kv_heads;
      const int64_t full = std::min<int64_t>(n_kv * (12 + 16), 64) / n_kv;
      if (full * n_kv == std::min<int64_t>(n_kv * 28, 64) && n_kv * 28 <= 64) {
        convert::convert_model(src, base + "/joint", opts("high", 4, "joint", 28), "");
        EXPECT_LE(max_logit_diff(out, base + "/joint", ids), 1e-4);
      }
    }
  }
  fs::remove_all(src);
  fs::remove_all(base);
}

TEST_P(ConvertArch, LatentCacheDecodesLikeRecomputation) {
  auto src = saved_model(GetParam(), 9);
  auto out = testutil::temp_dir("mla-cache") + "/out";
  convert::convert_model(src, out, opts("uniform", 4, "joint", 4), "");
  auto m = model::load_model(out, torch::kFloat32);
  auto orig = model::load_model(src, torch::kFloat32);
  torch::NoGradGuard ng;
  auto ids = random_ids(2, 20, 97, 3);
  auto full = m->forward(ids);
  auto cache = m->make_cache(2);
  std::vector<torch::Tensor> parts{m->forward(ids.narrow(1, 0, 7), cache.get())};
  for (int64_t t = 7; t < 20; ++t) parts.push_back(m->forward(ids.narrow(1, t, 1), cache.get()));
  EXPECT_LE((torch::cat(parts, 1) - full).abs().max().item<double>(), 1e-4);
  // Cache size: (r + d_kv) / (2 d_h) of the original's, exactly.
  auto oc = orig->make_cache(2);
  orig->forward(ids, oc.get());
  EXPECT_DOUBLE_EQ(static_cast<double>(cache->bytes()) / static_cast<double>(oc->bytes()), (4.0 + 4.0) / (2.0 * 16));
  // Batched generation with ragged prompts still matches single runs.
  infer::GenerateOptions go;
  go.max_new = 6;
  std::vector<std::vector<int64_t>> prompts{{3, 4, 5, 6, 7, 8}, {9, 10}};
  auto batched = infer::generate(*m, prompts, go);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batched[i], infer::generate(*m, {prompts[i]}, go)[0]);
  fs::remove_all(src);
  fs::remove_all(fs::path(out).parent_path());
}

INSTANTIATE_TEST_SUITE_P(Tiny, ConvertArch, ::testing::Values("llama-mha", "llama-gqa", "qwen2"), [](const auto& info) {
  std::string s = info.param;
  for (auto& c : s)
    if (c == '-') c = '_';
  return s;
});

// Random layer weights with a decaying spectrum, like trained projections.
convert::AttnWeights random_layer(const convert::LayerShape& s, bool bias, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto mat = [&](int64_t rows) {
    auto a = at::normal(0.0, 1.0, {rows, s.hidden}, gen, torch::TensorOptions().dtype(torch::kFloat32));
    auto decay = torch::exp(-torch::arange(s.hidden, torch::kFloat32) / (s.hidden / 8.0));
    return a * decay.unsqueeze(0);
  };
  convert::AttnWeights w{mat(s.n_h * s.d_h), {}, mat(s.n_kv * s.d_h), {}, mat(s.n_kv * s.d_h), {}};
  if (bias) {
    w.bq = at::normal(0.0, 1.0, {s.n_h * s.d_h}, gen, torch::TensorOptions());
    w.bk = at::normal(0.0, 1.0, {s.n_kv * s.d_h}, gen, torch::TensorOptions());
    w.bv = at::normal(0.0, 1.0, {s.n_kv * s.d_h}, gen, torch::TensorOptions());
  }
  return w;
}

torch::Tensor tensor_of(const convert::MlaLayer& l, const std::string& name) {
  for (const auto& [k, t] : l.tensors)
    if (k == name) return t;
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

TEST(SvdJoint, TruncationErrorEqualsDroppedSingularValues) {
  convert::LayerShape s{128, 8, 4, 16};
  auto w = random_layer(s, true, 1);
  std::vector<std::vector<int64_t>> freqs(4, {0, 3});  // r = 4
  for (int64_t dkv : {2, 5, 9}) {
    auto l = convert::convert_layer(w, s, freqs, opts("high", 4, "joint", dkv));
    auto down = tensor_of(l, "kv_proj.down_kv.weight");
    auto m_hat = torch::cat({torch::matmul(tensor_of(l, "kv_proj.up_k.weight"), down),
                             torch::matmul(tensor_of(l, "kv_proj.up_v.weight"), down)},
                            0).to(torch::kFloat64);
    // The matrix the method factorises: nope rows of W_k (head-major, ascending dims) over W_v.
    std::vector<int64_t> nope;
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t d = 0; d < 16; ++d)
        if (d != 0 && d != 3 && d != 8 && d != 11) nope.push_back(h * 16 + d);
    auto m = torch::cat({w.wk.index_select(0, torch::tensor(nope)), w.wv}, 0).to(torch::kFloat64);
    auto sv = torch::linalg::svdvals(m, c10::nullopt);
    const int64_t L = dkv * 4;
    double dropped = std::sqrt(sv.narrow(0, L, sv.size(0) - L).pow(2).sum().item<double>());
    double err = (m - m_hat).norm().item<double>();
    EXPECT_NEAR(err / dropped, 1.0, 1e-4) << "dkv " << dkv;
    // Down rows are orthonormal, and biases moved to the up projections unchanged.
    auto gram = torch::matmul(down, down.t());
    EXPECT_LE((gram - torch::eye(L)).abs().max().item<double>(), 1e-4);
    EXPECT_TRUE(torch::equal(tensor_of(l, "kv_proj.up_v.bias"), w.bv));
  }
}

TEST(SvdJoint, RandomizedIsWithinOnePercentOfExact) {
  convert::LayerShape s{1024, 8, 8, 128};
  auto w = random_layer(s, false, 2);
  std::vector<std::vector<int64_t>> freqs(8, {0, 1, 2, 3, 4, 5, 6, 7});
  auto exact = opts("high", 16, "joint", 16);
  auto rnd = exact;
  rnd.algo = convert::SvdAlgo::Randomized;
  auto a = convert::convert_layer(w, s, freqs, exact);
  auto b = convert::convert_layer(w, s, freqs, rnd);
  EXPECT_LE(b.k_err, a.k_err * 1.01 + 1e-6);
  EXPECT_LE(b.v_err, a.v_err * 1.01 + 1e-6);
  EXPECT_GE(b.k_err, a.k_err * 0.999);
}

// The shared-product form of the held-out error equals the direct definition sqrt(tr(E C Eᵀ) / tr(M C Mᵀ)),
// block by block, in fp64 (small) and within fp32 rounding for a matrix large enough to compute in fp32.
TEST(HeldoutError, SharedProductEqualsDefinition) {
  for (int64_t rows : {40, 1200}) {
    const int64_t n = 1000, k = 12, split = rows / 3;
    torch::manual_seed(rows);
    auto m = torch::randn({rows, n}, torch::kFloat64);
    auto x = torch::randn({300, n}, torch::kFloat64);
    auto cov = torch::matmul(x.t(), x) / 300.0;
    auto f = convert::truncated_svd(m, k, convert::SvdAlgo::Exact);
    auto approx = torch::matmul(f.up, f.down);
    auto mc = convert::times_cov(m, cov);
    auto [ek, ev] = convert::relative_errors_on(m, mc, f, split, cov);
    auto direct = [&](int64_t a, int64_t b) {
      auto e = (m - approx).narrow(0, a, b - a), md = m.narrow(0, a, b - a);
      return std::sqrt((torch::matmul(e, cov) * e).sum().item<double>() /
                       (torch::matmul(md, cov) * md).sum().item<double>());
    };
    const double tol = rows * n <= (1 << 20) ? 1e-8 : 1e-4;
    EXPECT_NEAR(ek, direct(0, split), tol * direct(0, split)) << rows;
    EXPECT_NEAR(ev, direct(split, rows), tol * direct(split, rows)) << rows;
    EXPECT_GT(ek, 0.1);  // a rank-12 approximation of a random matrix is far from exact
  }
}

TEST(HeldoutError, FromInputsEqualsFromTheirCovariance) {
  // Fewer held-out inputs than the width: the errors from X equal those from C = XᵀX / N.
  for (int64_t rows : {40, 1200}) {
    const int64_t n = 1000, k = 12, split = rows / 3, N = 300;
    torch::manual_seed(rows + 1);
    auto m = torch::randn({rows, n}, torch::kFloat64);
    auto x = torch::randn({N, n}, torch::kFloat64);
    auto cov = torch::matmul(x.t(), x) / static_cast<double>(N);
    auto f = convert::truncated_svd(m, k, convert::SvdAlgo::Exact);
    auto [ek, ev] = convert::relative_errors_on(m, convert::times_cov(m, cov), f, split, cov);
    auto [rk, rv] = convert::relative_errors_on_rows(m, f, split, x.to(torch::kBFloat16).to(torch::kFloat64));
    auto [bk, bv] = convert::relative_errors_on_rows(m, f, split, x);
    const double tol = rows * n <= (1 << 20) ? 1e-8 : 1e-4;
    EXPECT_NEAR(bk, ek, tol * ek) << rows;
    EXPECT_NEAR(bv, ev, tol * ev) << rows;
    EXPECT_NEAR(rk, ek, 1e-2 * ek) << rows;  // bf16 inputs: close, not equal
    auto approx = torch::matmul(f.up, f.down);
    const double one = convert::relative_error_on_rows(m, approx, x);
    EXPECT_NEAR(one, convert::relative_error_on(m, approx, cov), tol * one) << rows;
  }
}

TEST(SvdSplit, FactorsEachMatrixSeparately) {
  convert::LayerShape s{128, 4, 4, 16};
  auto w = random_layer(s, true, 3);
  std::vector<std::vector<int64_t>> freqs(4, {1, 2});
  auto l = convert::convert_layer(w, s, freqs, opts("uniform", 4, "split", 6));
  EXPECT_EQ(tensor_of(l, "kv_proj.down_k.weight").size(0), 24);
  EXPECT_EQ(tensor_of(l, "kv_proj.down_v.weight").size(0), 24);
  auto sv = torch::linalg::svdvals(w.wv.to(torch::kFloat64), c10::nullopt);
  double dropped = std::sqrt(sv.narrow(0, 24, sv.size(0) - 24).pow(2).sum().item<double>());
  EXPECT_NEAR(l.v_err * w.wv.to(torch::kFloat64).norm().item<double>() / dropped, 1.0, 1e-4);
  auto [before, after] = convert::kv_values_per_token(s, opts("uniform", 4, "split", 6));
  EXPECT_EQ(before, 2 * 4 * 16);
  EXPECT_EQ(after, 4 * 4 + 2 * 24);
}

TEST(Convert, KvRatioForJointIsFormula) {
  convert::LayerShape s{576, 9, 3, 64};
  for (int64_t r : {2, 8, 16})
    for (int64_t dkv : {8, 16, 32}) {
      auto [b, a] = convert::kv_values_per_token(s, opts("high", r, "joint", dkv));
      EXPECT_DOUBLE_EQ(static_cast<double>(a) / b, static_cast<double>(r + dkv) / (2.0 * 64));
    }
}

TEST(Convert, BadInputLeavesNoOutput) {
  auto src = saved_model("llama-gqa", 4);
  auto base = testutil::temp_dir("mla-bad");
  auto out = base + "/out";
  auto none_left = [&] {
    EXPECT_FALSE(fs::exists(out));
    EXPECT_TRUE(fs::is_empty(base)) << "a temporary folder was left in " << base;
  };
  expect_error([&] { convert::convert_model(src, out, opts("high", 3, "joint", 4), ""); }, "must be even");
  none_left();
  expect_error([&] { convert::convert_model(src, out, opts("high", 18, "joint", 4), ""); }, "between 2 and head_dim");
  none_left();
  expect_error([&] { convert::convert_model(src, out, opts("high", 4, "joint", 40), ""); }, "possible rank");
  none_left();
  expect_error([&] { convert::parse_rope_strategy("middle"); }, "middle");
  expect_error([&] { convert::convert_model(src, out, opts("2-norm", 4, "joint", 4), ""); }, "--calib");
  none_left();
  expect_error([&] { convert::convert_model(src, out, opts("high", 4, "joint", 4), "/nonexistent.calib"); },
               "/nonexistent.calib");
  none_left();
  // Already converted.
  convert::convert_model(src, out, opts("high", 4, "joint", 4), "");
  expect_error([&] { convert::convert_model(out, base + "/again", opts("high", 4, "joint", 4), ""); },
               "already converted");
  EXPECT_FALSE(fs::exists(base + "/again"));
  // An existing non-empty output folder is not overwritten.
  expect_error([&] { convert::convert_model(src, out, opts("high", 4, "joint", 4), ""); }, "not empty");
  // qwen3 is refused clearly.
  auto q3 = saved_model("qwen3", 4);
  expect_error([&] { convert::convert_model(q3, base + "/q3", opts("high", 4, "joint", 4), ""); }, "qwen3");
  EXPECT_FALSE(fs::exists(base + "/q3"));
  fs::remove_all(src);
  fs::remove_all(q3);
  fs::remove_all(base);
}

TEST(Convert, LoadsReferenceNamedCheckpointWithoutIndices) {
  // A checkpoint as the reference writes it: no rope_freq_indices; fixed strategies are recomputed.
  auto src = saved_model("llama-mha", 6);
  auto base = testutil::temp_dir("mla-refnames");
  convert::convert_model(src, base + "/ours", opts("low", 6, "joint", 8), "");
  auto cfg = nlohmann::json::parse(std::ifstream(base + "/ours/config.json"));
  cfg["mha2mla"].erase("rope_freq_indices");
  std::ofstream(base + "/ours/config.json") << cfg.dump();
  auto c = io::ModelConfig::load(base + "/ours");
  EXPECT_EQ(c.mla.freqs[1][2], (std::vector<int64_t>{5, 6, 7}));
  auto ids = random_ids(1, 12, 97, 4);
  torch::NoGradGuard ng;
  EXPECT_NO_THROW(model::load_model(base + "/ours", torch::kFloat32)->forward(ids));
  fs::remove_all(src);
  fs::remove_all(base);
}

}  // namespace

namespace {

TEST(Convert, CalibrationDrivenMethods) {
  auto a = saved_model("llama-gqa", 11);
  auto b = saved_model("llama-gqa", 12);  // same shape, other weights
  auto base = testutil::temp_dir("mla-calib");
  auto m = model::load_model(a, torch::kFloat32);
  std::vector<int64_t> ids;
  auto gen = at::detail::createCPUGenerator(5);
  auto t = at::randint(0, 97, {640}, gen, torch::kInt64);
  for (int64_t i = 0; i < t.size(0); ++i) ids.push_back(t[i].item<int64_t>());
  auto stats = convert::calibrate(*m, ids, 10, 64);
  stats.fingerprint = convert::model_fingerprint(a);
  convert::save_calib(base + "/a.calib", stats);

  // 2-norm + activation-aware on the model it was made for: held-out errors are reported, and whitening
  // lowers the error on held-out activations against plain SVD on average.
  auto o = opts("2-norm", 4, "activation", 3);
  auto rep = convert::convert_model(a, base + "/act", o, base + "/a.calib");
  double act = 0, plain = 0;
  for (const auto& l : rep["layers"]) {
    act += l["k_rel_err_heldout"].get<double>() + l["v_rel_err_heldout"].get<double>();
    plain += l["k_rel_err_heldout_plain_svd"].get<double>() + l["v_rel_err_heldout_plain_svd"].get<double>();
  }
  EXPECT_LT(act, plain) << "activation " << act << " plain " << plain;
  RecordProperty("act_vs_plain", std::to_string(act) + " vs " + std::to_string(plain));
  torch::NoGradGuard ng;
  EXPECT_NO_THROW(model::load_model(base + "/act", torch::kFloat32)->forward(random_ids(1, 8, 97, 1)));

  // The same file on another model is refused, and nothing is written.
  try {
    convert::convert_model(b, base + "/wrong", opts("2-norm", 4, "joint", 3), base + "/a.calib");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(base + "/wrong"));
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove_all(base);
}

}  // namespace
