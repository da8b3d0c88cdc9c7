// `mha2mla train` end to end: data-parallel equivalence on loopback, a crash while saving, bad input.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testutil::temp_dir("train-cli");
    std::ofstream(dir_ + "/tokenizer.json") << testutil::byte_level_tokenizer_json().dump();
    std::ofstream text(dir_ + "/text.txt");
    for (int d = 0; d < 40; ++d) {
      for (int l = 0; l < 6; ++l) text << "the thread " << d * 7 + l << " runs through the thin earth, and there it ends.\n";
      text << "\n";
    }
    text.close();
    ASSERT_EQ(sh("data --tokenizer " + dir_ + " --in " + dir_ + "/text.txt --out " + dir_ + "/tok --val-fraction 0.2"), 0);
    auto cfg = testutil::tiny_config("llama-gqa");
    cfg["vocab_size"] = 262;
    cfg["eos_token_id"] = 0;
    model::save_model(*testutil::make_random_model(cfg, 8), dir_ + "/init");
    fs::copy_file(dir_ + "/tokenizer.json", dir_ + "/init/tokenizer.json");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static int sh(const std::string& args, const std::string& env = "") {
    return testutil::run(env + " " MHA2MLA_CLI " " + args + " > " + dir_ + "/last.out 2> " + dir_ + "/last.err");
  }
  static std::string err() {
    std::ifstream f(dir_ + "/last.err");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  static std::string train_args(const std::string& out, int steps) {
    return "train --model " + dir_ + "/init --data " + dir_ + "/tok --val " + dir_ + "/tok --out " + out +
           " --steps " + std::to_string(steps) + " --batch 4 --seq-len 32 --lr 3e-3 --val-windows 4 --json";
  }
  static double max_param_diff(const std::string& a, const std::string& b) {
    auto ca = io::Checkpoint::open(a), cb = io::Checkpoint::open(b);
    double worst = 0;
    for (const auto& n : ca.names()) worst = std::max(worst, (ca.get(n) - cb.get(n)).abs().max().item<double>());
    return worst;
  }
  static std::string dir_;
};
std::string TrainCli::dir_;

TEST_F(TrainCli, TwoProcessesMatchOne) {
  ASSERT_EQ(sh(train_args(dir_ + "/one", 4) + " --nproc 1"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/two", 4) + " --nproc 2"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/zero", 4) + " --nproc 2 --zero1"), 0) << err();
  double d2 = max_param_diff(dir_ + "/one/model", dir_ + "/two/model");
  double dz = max_param_diff(dir_ + "/one/model", dir_ + "/zero/model");
  // fp32 tolerance: the reduction order differs, and Adam magnifies rounding where a gradient is ~0.
  EXPECT_LE(d2, 1e-4);
  EXPECT_LE(dz, 1e-4);
  // And training really moved the weights.
  EXPECT_GT(max_param_diff(dir_ + "/one/model", dir_ + "/init"), 1e-3);
  auto j = nlohmann::json::parse(std::ifstream(dir_ + "/last.out"));
  EXPECT_EQ(j["steps"], 4);
  EXPECT_TRUE(fs::exists(dir_ + "/two/loss.svg"));
  EXPECT_TRUE(fs::exists(dir_ + "/two/train_log.jsonl"));
}

// What a killed run must leave: `latest` naming a complete, loadable checkpoint (weights, state, this
// rank's optimizer shard), and, if a final model folder exists, a loadable one.
void expect_recoverable(const std::string& out, const std::string& what) {
  SCOPED_TRACE(what);
  std::string latest;
  std::getline(std::ifstream(out + "/checkpoints/latest"), latest);
  ASSERT_FALSE(latest.empty()) << "no checkpoint named by " << out << "/checkpoints/latest";
  const std::string cp = out + "/checkpoints/" + latest;
  EXPECT_NO_THROW(model::load_model(cp, torch::kFloat32));
  EXPECT_NO_THROW(io::SafetensorsFile(cp + "/optimizer-rank0.safetensors"));
  auto st = nlohmann::json::parse(std::ifstream(cp + "/state.json"), nullptr, false);
  EXPECT_FALSE(st.is_discarded()) << cp << "/state.json";
  if (fs::exists(out + "/model")) {
    EXPECT_NO_THROW(model::load_model(out + "/model", torch::kFloat32));
  }
}

// A SIGKILL at every step of checkpoint and final-model publication: the run stays recoverable, and resuming
// it ends exactly where an uninterrupted run ends.
TEST_F(TrainCli, KillAtEveryPublicationStepLeavesALoadableState) {
  ASSERT_EQ(sh(train_args(dir_ + "/straight", 6) + " --save-every 2"), 0) << err();
  // Saves happen at steps 2, 4, 6, then the final model: the 4th publication. The 3rd save prunes step 2.
  const std::vector<std::string> points = {
      "checkpoint:optimizer_written@2", "checkpoint:model_written@2", "publish:built@2",
      "checkpoint:published@2",         "checkpoint:latest_written@2", "checkpoint:pruned@1",
      "checkpoint:latest_written@3",    "publish:built@4"};
  for (size_t i = 0; i < points.size(); ++i) {
    const std::string out = dir_ + "/kill" + std::to_string(i);
    EXPECT_NE(sh(train_args(out, 6) + " --save-every 2", "MHA2MLA_FAULT=" + points[i]), 0) << points[i];
    expect_recoverable(out, points[i]);
    ASSERT_EQ(sh(train_args(out, 6) + " --save-every 2 --resume"), 0) << points[i] << ": " << err();
    expect_recoverable(out, points[i] + ", resumed");
    EXPECT_EQ(max_param_diff(out + "/model", dir_ + "/straight/model"), 0.0) << points[i];
  }
  // Replacing a final model that exists: a second run continues the first to 8 steps.
  for (const std::string point : {"publish:built@2", "publish:exchanged@1"}) {
    const std::string out = dir_ + "/replace-" + point.substr(8, 5);
    fs::remove_all(out);
    fs::copy(dir_ + "/straight", out, fs::copy_options::recursive);
    EXPECT_NE(sh(train_args(out, 8) + " --save-every 2 --resume", "MHA2MLA_FAULT=" + point), 0) << point;
    expect_recoverable(out, point);
    ASSERT_TRUE(fs::exists(out + "/model")) << point << ": the previous final model is gone";
    ASSERT_EQ(sh(train_args(out, 8) + " --save-every 2 --resume"), 0) << point << ": " << err();
    expect_recoverable(out, point + ", resumed");
  }
}

// Per-step log entries ({"step", "loss", "grad_norm", ...}) of a run.
std::vector<nlohmann::json> log_of(const std::string& out) {
  std::vector<nlohmann::json> v;
  std::ifstream f(out + "/train_log.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

// Largest relative difference of `field` between two runs' logs, step by step (infinity if the steps differ).
double log_diff(const std::string& a, const std::string& b, const char* field) {
  auto la = log_of(a), lb = log_of(b);
  if (la.size() != lb.size() || la.empty()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    if (la[i]["step"] != lb[i]["step"]) return INFINITY;
    const double x = la[i][field].get<double>(), y = lb[i][field].get<double>();
    worst = std::max(worst, std::abs(x - y) / std::max(std::abs(x), 1e-12));
  }
  return worst;
}

// Elements of optimizer state (exp_avg and exp_avg_sq) in one rank's file.
int64_t state_elements(const std::string& file) {
  int64_t n = 0;
  const io::SafetensorsFile f(file);  // kept alive: tensors() refers into it
  for (const auto& t : f.tensors()) {
    int64_t k = 1;
    for (auto d : t.shape) k *= d;
    n += k;
  }
  return n;
}

// No clipping and no weight decay: nothing hides a gradient of the wrong scale. Adam itself is almost
// invariant to that scale, so the logged gradient norm (of the reduced gradient) is compared as well as
// the loss; planting the sum-instead-of-mean bug must break the comparison.
TEST_F(TrainCli, DataParallelStepsMatchOneProcess) {
  const std::string plain = " --clip 0 --weight-decay 0";
  ASSERT_EQ(sh(train_args(dir_ + "/dp1", 4) + plain + " --nproc 1"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/dp2", 4) + plain + " --nproc 2"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/dpz", 4) + plain + " --nproc 2 --zero1"), 0) << err();
  ASSERT_EQ(log_of(dir_ + "/dp1").size(), 4u);
  for (const char* run : {"/dp2", "/dpz"}) {
    SCOPED_TRACE(run);
    EXPECT_LE(log_diff(dir_ + "/dp1", dir_ + run, "loss"), 1e-5);
    EXPECT_LE(log_diff(dir_ + "/dp1", dir_ + run, "grad_norm"), 1e-4);
    EXPECT_LE(max_param_diff(dir_ + "/dp1/model", dir_ + run + "/model"), 1e-4);
  }
  // The mutant: gradients summed over 2 ranks are twice the mean.
  ASSERT_EQ(sh(train_args(dir_ + "/dpm", 4) + plain + " --nproc 2", "MHA2MLA_MUTATE=allreduce-sum"), 0) << err();
  EXPECT_GT(log_diff(dir_ + "/dp1", dir_ + "/dpm", "grad_norm"), 0.5);
}

// Under ZeRO-1 each of N ranks keeps about 1/N of the optimizer state; without it every rank keeps all.
TEST_F(TrainCli, Zero1ShardsOptimizerState) {
  ASSERT_EQ(sh(train_args(dir_ + "/z1", 2) + " --nproc 1"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/z2", 2) + " --nproc 2 --zero1"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/z3", 2) + " --nproc 2"), 0) << err();
  const std::string cp = "/checkpoints/step-00000002/optimizer-rank";
  const int64_t all = state_elements(dir_ + "/z1" + cp + "0.safetensors");
  const int64_t r0 = state_elements(dir_ + "/z2" + cp + "0.safetensors");
  const int64_t r1 = state_elements(dir_ + "/z2" + cp + "1.safetensors");
  EXPECT_EQ(r0 + r1, all);
  EXPECT_NEAR(double(r0) / double(all), 0.5, 0.15) << r0 << " of " << all;
  EXPECT_NEAR(double(r1) / double(all), 0.5, 0.15) << r1 << " of " << all;
  EXPECT_EQ(state_elements(dir_ + "/z3" + cp + "1.safetensors"), all);
}

// Stopping and resuming a data-parallel run (plain and ZeRO-1) reproduces the uninterrupted one exactly.
TEST_F(TrainCli, ExactResumeWithTwoProcesses) {
  for (const std::string extra : {" --nproc 2", " --nproc 2 --zero1"}) {
    SCOPED_TRACE(extra);
    const std::string tag = extra.size() > 10 ? "z" : "p";
    const std::string a = dir_ + "/res-straight-" + tag, b = dir_ + "/res-stopped-" + tag;
    ASSERT_EQ(sh(train_args(a, 6) + " --save-every 2" + extra), 0) << err();
    ASSERT_EQ(sh(train_args(b, 6) + " --save-every 2 --stop-after 2" + extra), 0) << err();
    EXPECT_FALSE(fs::exists(b + "/model"));
    ASSERT_EQ(sh(train_args(b, 6) + " --save-every 2 --resume" + extra), 0) << err();
    EXPECT_EQ(log_diff(a, b, "loss"), 0.0);
    EXPECT_EQ(max_param_diff(a + "/model", b + "/model"), 0.0);
  }
}

// A rank that dies mid-run: the launcher stops the others and reports which one, instead of hanging.
TEST_F(TrainCli, DeadRankStopsTheOthers) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = sh(train_args(dir_ + "/dead", 200) + " --nproc 2 --save-every 1000",
                    "MHA2MLA_FAULT=train:step@3 MHA2MLA_FAULT_RANK=1 MHA2MLA_DIST_TIMEOUT=30");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0);
  EXPECT_LT(secs, 60.0);
  EXPECT_NE(err().find("rank 1 of 2 was killed by signal 9"), std::string::npos) << err();
}

TEST_F(TrainCli, BadInput) {
  EXPECT_NE(sh(train_args(dir_ + "/bad1", 2) + " --nproc 3"), 0);
  EXPECT_NE(err().find("more than the work allows"), std::string::npos) << err();
  // Token ids beyond the model's vocabulary.
  auto cfg = testutil::tiny_config("llama-mha");  // vocab 97 < 262
  model::save_model(*testutil::make_random_model(cfg, 2), dir_ + "/small");
  EXPECT_NE(sh("train --model " + dir_ + "/small --data " + dir_ + "/tok --val " + dir_ + "/tok --out " + dir_ +
               "/bad2 --steps 2 --batch 2 --seq-len 16"),
            0);
  EXPECT_NE(err().find("vocab"), std::string::npos) << err();
  // Too little data for the sequence length.
  EXPECT_NE(sh(train_args(dir_ + "/bad3", 2) + " --seq-len 100000"), 0);
  EXPECT_NE(err().find("need at least"), std::string::npos) << err();
  // Resuming a run with another configuration.
  ASSERT_EQ(sh(train_args(dir_ + "/cfg", 2)), 0) << err();
  EXPECT_NE(sh(train_args(dir_ + "/cfg", 4) + " --batch 8 --resume"), 0);
  const std::string e = err();
  EXPECT_NE(e.find("another model or configuration"), std::string::npos) << e;
  EXPECT_EQ(std::count(e.begin(), e.end(), '\n'), 1) << e;
}

}  // namespace
