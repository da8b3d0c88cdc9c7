// `mha2mla train` end to end: data-parallel equivalence on loopback, a crash while saving, bad input.
#include <gtest/gtest.h>

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

TEST_F(TrainCli, CrashWhileSavingLeavesPreviousCheckpoint) {
  const std::string out = dir_ + "/crash";
  EXPECT_NE(sh(train_args(out, 6) + " --save-every 2", "MHA2MLA_FAULT_SAVE_STEP=4"), 0);
  std::string latest;
  std::getline(std::ifstream(out + "/checkpoints/latest"), latest);
  EXPECT_EQ(latest, "step-00000002");
  EXPECT_NO_THROW(model::load_model(out + "/checkpoints/" + latest, torch::kFloat32));
  ASSERT_EQ(sh(train_args(out, 6) + " --save-every 2 --resume"), 0) << err();
  ASSERT_EQ(sh(train_args(dir_ + "/straight", 6) + " --save-every 2"), 0) << err();
  EXPECT_EQ(max_param_diff(out + "/model", dir_ + "/straight/model"), 0.0);
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
