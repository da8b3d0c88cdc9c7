// Calibration statistics against an independent PyTorch computation, window/held-out bookkeeping,
// the calibration file (round trip, model fingerprint, damaged files) and the calibrate subcommand.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "convert/calibrate.h"
#include "convert/rope_select.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"
#include "util/error.h"

using namespace mha2mla;
using namespace mha2mla::convert;
using testutil::make_random_model;
using testutil::tiny_config;
namespace fs = std::filesystem;

namespace {

using testutil::error_of;
using testutil::expect_one_line_error;
using testutil::run_cli;

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto t = at::randint(0, vocab, {n}, gen, torch::kInt64);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.to(torch::kFloat64), y = b.to(torch::kFloat64);
  return (x - y).abs().max().item<double>() / std::max(y.abs().max().item<double>(), 1e-30);
}

class CalibArch : public ::testing::TestWithParam<std::string> {};

// qwen2 has q/k biases; qwen3 has q/k norms (the statistic is taken before them) and head_dim != d/n_h.
TEST_P(CalibArch, MatchesPyTorchReference) {
  MHA2MLA_REQUIRE_ORACLE(testutil::python_has_torch(), "Debian python3 with torch (python3-torch) not found");
  const std::string kind = GetParam();
  auto dir = testutil::temp_dir("calib-ref-" + kind);
  auto m = make_random_model(tiny_config(kind), 17);
  model::save_model(*m, dir);
  const int64_t ctx = 24, samples = 4;
  auto ids = random_ids(5 * ctx + 7, m->config().vocab_size, 3);  // more text than samples * ctx
  std::ofstream(dir + "/ids.json") << nlohmann::json(ids).dump();
  std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/convert/calib_ref.py --model " + dir +
                    " --ids " + dir + "/ids.json --samples " + std::to_string(samples) + " --ctx " +
                    std::to_string(ctx) + " --out " + dir + "/ref.safetensors";
  ASSERT_EQ(testutil::run(cmd), 0) << cmd;
  io::SafetensorsFile ref(dir + "/ref.safetensors");

  auto s = calibrate(*m, ids, samples, ctx);
  auto counts = ref.tensor("counts");
  EXPECT_EQ(s.tokens, counts[0].item<int64_t>());
  EXPECT_EQ(s.heldout_tokens, counts[1].item<int64_t>());
  EXPECT_EQ(s.samples, counts[2].item<int64_t>());
  EXPECT_EQ(s.tokens, 3 * ctx);
  EXPECT_EQ(s.heldout_tokens, ctx);
  EXPECT_EQ(s.q_norm.sizes(), ref.tensor("q_norm").sizes());
  EXPECT_EQ(s.k_norm.sizes(), ref.tensor("k_norm").sizes());
  EXPECT_LE(rel_diff(s.q_norm, ref.tensor("q_norm")), 1e-4);
  EXPECT_LE(rel_diff(s.k_norm, ref.tensor("k_norm")), 1e-4);
  for (int64_t l = 0; l < m->config().num_layers; ++l) {
    auto c = ref.tensor("cov." + std::to_string(l)), h = ref.tensor("cov_heldout." + std::to_string(l));
    EXPECT_EQ(s.cov[l].scalar_type(), torch::kFloat64);
    EXPECT_LE(rel_diff(s.cov[l], c), 1e-4) << "layer " << l;
    EXPECT_LE(rel_diff(s.cov_heldout[l], h), 1e-4) << "layer " << l;
    // Held-out windows are other text: their covariance must differ from the training one.
    EXPECT_GT(rel_diff(s.cov_heldout[l], s.cov[l]), 1e-3) << "layer " << l;
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Calibrate, CalibArch, ::testing::Values("qwen2", "qwen3"));

TEST(Calibrate, WindowsAndHeldOutShare) {
  auto m = make_random_model(tiny_config("llama-gqa"), 2);
  const int64_t ctx = 4;
  auto ids = random_ids(10 * ctx + 3, m->config().vocab_size, 1);
  struct Case {
    int64_t samples, windows, heldout;
  };
  // round(windows / 10), but at least 1 once there are 2 windows; at most `samples` windows.
  for (auto c : {Case{100, 10, 1}, Case{3, 3, 1}, Case{2, 2, 1}, Case{1, 1, 0}}) {
    auto s = calibrate(*m, ids, c.samples, ctx);
    EXPECT_EQ(s.samples, c.windows);
    EXPECT_EQ(s.tokens, (c.windows - c.heldout) * ctx);
    EXPECT_EQ(s.heldout_tokens, c.heldout * ctx);
    EXPECT_EQ(s.ctx, ctx);
    ASSERT_EQ(s.cov_heldout.size(), 2u);
    if (c.heldout == 0) {
      EXPECT_EQ(s.cov_heldout[0].abs().sum().item<double>(), 0.0);
    }
    // The covariance of RMS-normalised inputs is symmetric positive semi-definite.
    EXPECT_LE((s.cov[1] - s.cov[1].t()).abs().max().item<double>(), 1e-12);
    EXPECT_GE(torch::linalg::eigvalsh(s.cov[1], "L").min().item<double>(), -1e-9);
  }
  auto s = calibrate(*m, random_ids(15 * ctx, m->config().vocab_size, 1), 100, ctx);
  EXPECT_EQ(s.heldout_tokens, 2 * ctx);  // 15 windows: 1.5 rounds up
  EXPECT_FALSE(m->attn_input_hook) << "the hook must be removed afterwards";
}

TEST(Calibrate, ErrorsAndHookRestored) {
  auto m = make_random_model(tiny_config("llama-mha"), 2);
  EXPECT_EQ(error_of([&] { calibrate(*m, random_ids(10, 97, 1), 8, 16); }),
            "calibration text has 10 tokens, need at least 16");
  EXPECT_NE(error_of([&] { calibrate(*m, random_ids(10, 97, 1), 0, 4); }).find("at least 1 sample"), std::string::npos);
  // A failing forward (token outside the vocabulary) leaves the caller's hook in place.
  int calls = 0;
  m->attn_input_hook = [&](int64_t, const torch::Tensor&) { ++calls; };
  auto ids = random_ids(8, 97, 1);
  ids[6] = 500;
  EXPECT_NE(error_of([&] { calibrate(*m, ids, 2, 4); }).find("outside the vocabulary"), std::string::npos);
  ASSERT_TRUE(m->attn_input_hook);
  torch::NoGradGuard ng;
  m->hidden(torch::zeros({1, 3}, torch::kInt64));
  EXPECT_EQ(calls, 2);  // one per layer
}

TEST(CalibFile, RoundTripAndFingerprint) {
  auto dir = testutil::temp_dir("calib-file");
  auto m = make_random_model(tiny_config("qwen2"), 5);
  model::save_model(*m, dir + "/model");
  auto s = calibrate(*m, random_ids(40, 97, 2), 5, 8);
  EXPECT_TRUE(s.fingerprint.empty());  // the caller names the checkpoint
  s.fingerprint = model_fingerprint(dir + "/model");
  const std::string path = dir + "/calib.safetensors";
  save_calib(path, s);
  auto t = load_calib(path);
  EXPECT_EQ(t.fingerprint, s.fingerprint);
  EXPECT_EQ(t.tokens, s.tokens);
  EXPECT_EQ(t.heldout_tokens, s.heldout_tokens);
  EXPECT_EQ(t.samples, s.samples);
  EXPECT_EQ(t.ctx, s.ctx);
  EXPECT_TRUE(torch::equal(t.q_norm, s.q_norm));
  EXPECT_TRUE(torch::equal(t.k_norm, s.k_norm));
  ASSERT_EQ(t.cov.size(), s.cov.size());
  for (size_t l = 0; l < s.cov.size(); ++l) {
    EXPECT_TRUE(torch::equal(t.cov[l], s.cov[l]));
    EXPECT_TRUE(torch::equal(t.cov_heldout[l], s.cov_heldout[l]));
  }
  // The derived tensors people look at: product scores and the reference's rank layout.
  io::SafetensorsFile f(path);
  // 32 training and 8 held-out tokens of width 64 take less memory than the matrices: kept as the inputs.
  EXPECT_EQ(f.find("cov.0"), nullptr);
  ASSERT_NE(f.find("cov_rows.0"), nullptr);
  EXPECT_EQ(f.find("cov_rows.0")->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(f.find("cov_heldout_rows.1")->shape, (std::vector<int64_t>{8, 64}));
  auto scores = two_norm_scores(s, 2);
  EXPECT_TRUE(torch::equal(f.tensor("scores"), scores));
  EXPECT_TRUE(torch::equal(f.tensor("ranks"), ranks_from_scores(scores)));
  EXPECT_EQ(f.metadata().at("format"), "mha2mla-calib");

  // The same weights saved again (here sharded) match; the same shape with other weights does not.
  auto reloaded = model::load_model(dir + "/model", torch::kFloat32);
  model::save_model(*reloaded, dir + "/resaved", /*max_shard_bytes=*/4096);
  EXPECT_TRUE(fs::exists(dir + "/resaved/model.safetensors.index.json"));
  EXPECT_NO_THROW(check_calib_matches(t, dir + "/resaved", path));
  model::save_model(*make_random_model(tiny_config("qwen2"), 6), dir + "/other");
  EXPECT_NE(model_fingerprint(dir + "/other"), s.fingerprint);
  auto msg = error_of([&] { check_calib_matches(t, dir + "/other", path); });
  EXPECT_EQ(msg.rfind("calibration file " + path + " was made for another model", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  model::save_model(*make_random_model(tiny_config("llama-mha"), 5), dir + "/bigger");
  EXPECT_NE(model_fingerprint(dir + "/bigger"), s.fingerprint);
  fs::remove_all(dir);
}

TEST(CalibFile, MatricesAndInputsInOneFile) {
  // 256 training tokens fold into an fp64 sum (their f32 rows would outweigh the 64² matrix); the 64 held-out
  // ones stay rows. Both load as the same means.
  auto dir = testutil::temp_dir("calib-mixed");
  auto m = make_random_model(tiny_config("llama-gqa"), 5);
  auto s = calibrate(*m, random_ids(400, 97, 3), 5, 64);
  s.fingerprint = "test";
  save_calib(dir + "/c.safetensors", s);
  io::SafetensorsFile f(dir + "/c.safetensors");
  EXPECT_NE(f.find("cov.1"), nullptr);
  EXPECT_NE(f.find("cov_heldout_rows.1"), nullptr);
  EXPECT_EQ(f.find("cov_heldout.1"), nullptr);
  auto t = load_calib(dir + "/c.safetensors");
  for (size_t l = 0; l < s.cov.size(); ++l) {
    EXPECT_TRUE(torch::equal(t.cov[l], s.cov[l]));
    EXPECT_TRUE(torch::equal(t.cov_heldout[l], s.cov_heldout[l]));
    EXPECT_FALSE(t.cov.inputs(l).defined());
    ASSERT_TRUE(t.cov_heldout.inputs(l).defined());
    // The mean of the stored inputs is the covariance, computed here independently.
    auto x = t.cov_heldout.inputs(l).to(torch::kFloat64);
    EXPECT_LE((torch::matmul(x.t(), x) / 64.0 - s.cov_heldout[l]).abs().max().item<double>(), 1e-12);
  }
  fs::remove_all(dir);
}

TEST(CalibFile, DamagedOrForeignFilesAreErrors) {
  auto dir = testutil::temp_dir("calib-bad");
  auto m = make_random_model(tiny_config("llama-gqa"), 5);
  auto s = calibrate(*m, random_ids(24, 97, 2), 3, 8);
  s.fingerprint = "test";
  const std::string good = dir + "/good.safetensors";
  save_calib(good, s);
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string cut = dir + "/cut.safetensors";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  EXPECT_THROW(load_calib(cut), Error);
  EXPECT_THROW(load_calib(dir + "/missing.safetensors"), Error);

  // A valid safetensors file that is not ours.
  model::save_model(*m, dir + "/model");
  EXPECT_EQ(error_of([&] { load_calib(dir + "/model/model.safetensors"); }),
            dir + "/model/model.safetensors is not a mha2mla calibration file");

  // Ours, but with a tensor missing, a wrong shape or an unreadable count.
  io::SafetensorsFile f(good);
  auto rewrite = [&](const std::string& name, const std::string& drop, std::map<std::string, std::string> meta) {
    io::NamedTensors t;
    for (const auto& info : f.tensors())
      if (info.name != drop) t.push_back({info.name, f.tensor(info.name)});
    auto p = dir + "/" + name;
    io::save_safetensors(p, t, meta);
    return p;
  };
  auto meta = f.metadata();
  // 16 training and 8 held-out tokens of width 64: both stored as their inputs.
  ASSERT_NE(f.find("cov_heldout_rows.1"), nullptr);
  auto p1 = rewrite("nocov.safetensors", "cov_heldout_rows.1", meta);
  EXPECT_NE(error_of([&] { load_calib(p1); }).find("lacks tensor cov_heldout.1 (or cov_heldout_rows.1)"),
            std::string::npos);
  {
    io::NamedTensors t;
    for (const auto& info : f.tensors()) t.push_back({info.name, f.tensor(info.name)});
    t.push_back({"cov.0", torch::eye(64, torch::kFloat64)});  // both forms of one layer
    io::save_safetensors(dir + "/both.safetensors", t, meta);
    EXPECT_NE(error_of([&] { load_calib(dir + "/both.safetensors"); }).find("holds both cov.0 and cov_rows.0"),
              std::string::npos);
    for (auto& [name, x] : t)
      if (name == "cov_rows.1") x = x.narrow(0, 0, 15).contiguous();  // one token short
    t.pop_back();
    io::save_safetensors(dir + "/rows.safetensors", t, meta);
    EXPECT_NE(error_of([&] { load_calib(dir + "/rows.safetensors"); })
                  .find("tensor cov_rows.1 has shape [15, 64] F32, expected [16, 64]"),
              std::string::npos);
  }
  auto p2 = rewrite("noscores.safetensors", "ranks", meta);
  EXPECT_NE(error_of([&] { load_calib(p2); }).find("lacks tensor ranks"), std::string::npos);
  auto bad_meta = meta;
  bad_meta["tokens"] = "12x";
  auto p3 = rewrite("badmeta.safetensors", "", bad_meta);
  EXPECT_NE(error_of([&] { load_calib(p3); }).find("\"tokens\" is not a count"), std::string::npos);
  bad_meta = meta;
  bad_meta["version"] = "7";
  auto p4 = rewrite("version.safetensors", "", bad_meta);
  EXPECT_NE(error_of([&] { load_calib(p4); }).find("has version 7"), std::string::npos);
  // k_norm with the wrong number of frequencies.
  io::NamedTensors t;
  for (const auto& info : f.tensors())
    t.push_back({info.name, info.name == "k_norm" ? f.tensor(info.name).narrow(2, 0, 4).contiguous()
                                                  : f.tensor(info.name)});
  io::save_safetensors(dir + "/shape.safetensors", t, meta);
  EXPECT_NE(error_of([&] { load_calib(dir + "/shape.safetensors"); }).find("k_norm has shape [2, 2, 4], expected [2, 2, 8]"),
            std::string::npos);
  fs::remove_all(dir);
}

// The subcommand, run as users do.
TEST(CalibrateCli, JsonSummaryAndErrors) {
  ASSERT_TRUE(fs::exists(MHA2MLA_CLI)) << "build the mha2mla target first: " << MHA2MLA_CLI;
  auto dir = testutil::temp_dir("calib-cli");
  auto cfg = tiny_config("llama-gqa");
  cfg["vocab_size"] = 262;  // the byte-level tokenizer's ids
  cfg["max_position_embeddings"] = 32;
  auto m = make_random_model(cfg, 21);
  model::save_model(*m, dir + "/model");
  std::ofstream(dir + "/model/tokenizer.json") << testutil::byte_level_tokenizer_json().dump();
  std::string text;
  for (int i = 0; i < 12; ++i) text += "the quick brown fox jumps over the lazy dog; ";
  std::ofstream(dir + "/text.txt") << text;

  auto help = run_cli("calibrate --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("usage: mha2mla calibrate"), std::string::npos);

  const std::string base = "calibrate --model " + dir + "/model --text " + dir + "/text.txt";
  auto r = run_cli(base + " --samples 5 --out " + dir + "/c.safetensors --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["out"], dir + "/c.safetensors");
  EXPECT_EQ(j["ctx"], 32);  // min(max_position_embeddings, 512)
  EXPECT_EQ(j["samples"], 5);
  EXPECT_EQ(j["tokens"], 4 * 32);
  EXPECT_EQ(j["heldout_tokens"], 32);
  EXPECT_EQ(j["layers"], 2);
  auto s = load_calib(dir + "/c.safetensors");
  EXPECT_EQ(s.tokens, 4 * 32);
  EXPECT_NO_THROW(check_calib_matches(s, dir + "/model", "c"));

  auto plain = run_cli(base + " --ctx 16 --samples 3 --out " + dir + "/d.safetensors");
  ASSERT_EQ(plain.code, 0) << plain.err;
  // Windows and tokens both add up: 3 = 2 + 1 windows, and 2 × 16 = 32, 1 × 16 = 16 tokens.
  EXPECT_NE(plain.out.find("calibrated on 3 windows of 16 tokens: 2 for the statistics (32 tokens), 1 held out "
                           "(16 tokens)"),
            std::string::npos)
      << plain.out;
  EXPECT_NE(plain.out.find("layer 1 best frequencies"), std::string::npos) << plain.out;

  expect_one_line_error(run_cli(base), "missing --out");
  expect_one_line_error(run_cli(base + " --ctx 4096 --out " + dir + "/e.safetensors"), "need at least 4096");
  EXPECT_FALSE(fs::exists(dir + "/e.safetensors"));
  expect_one_line_error(run_cli(base + " --samples 0 --out " + dir + "/e.safetensors"), "--samples must be at least 1");

  // A converted model is refused before anything is computed.
  auto conv = nlohmann::json::parse(std::ifstream(dir + "/model/config.json"));
  conv["mha2mla"] = {{"partial_rope_version", "high"}, {"rope_dim_for_mla", 4}, {"svd_init_method", "none"}};
  std::ofstream(dir + "/model/config.json") << conv.dump();
  expect_one_line_error(run_cli(base + " --out " + dir + "/f.safetensors"), "model is already converted to MLA");
  fs::remove_all(dir);
}

}  // namespace
