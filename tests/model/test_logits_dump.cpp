// The runtime against stored PyTorch logits (tests/oracle/dumps/logits-KIND), so the check also runs without
// Python; test_transformer.cpp runs the live oracle on other weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/transformer.h"
#include "testing/oracle_dump.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

class LogitsDump : public ::testing::TestWithParam<std::string> {};

TEST_P(LogitsDump, MatchesStoredPyTorchLogits) {
  const std::string kind = GetParam(), name = "logits-" + kind;
  auto dir = testutil::temp_dir("dump-" + kind);
  auto m = testutil::dump_model(kind, 7);
  model::save_model(*m, dir);
  if (testutil::regenerate_dumps()) {
    auto ids = testutil::dump_ids(2, 10, m->config().vocab_size, 11);
    std::ofstream(dir + "/ids.json") << testutil::ids_json(ids).dump();
    testutil::run_oracle_script("torch_ref.py --threads 2 --model " + dir + " --ids " + dir + "/ids.json --out " + dir +
                                "/ref.safetensors");
    io::SafetensorsFile ref(dir + "/ref.safetensors");
    io::save_safetensors(testutil::dump_path(name), {{"ids", ids}, {"logits", ref.tensor("logits").clone()}});
  }
  auto exp = testutil::open_dump(name);
  ASSERT_TRUE(exp);
  auto ids = exp->tensor("ids"), ref = exp->tensor("logits");
  auto loaded = model::load_model(dir, torch::kFloat32);  // through the real loader
  torch::NoGradGuard ng;
  auto ours = loaded->forward(ids);
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-4) << kind;
  EXPECT_GT(ref.abs().max().item<double>(), 0.1) << "reference logits are degenerate";
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Tiny, LogitsDump, ::testing::Values("llama-mha", "llama-gqa", "qwen2", "qwen3"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

}  // namespace
