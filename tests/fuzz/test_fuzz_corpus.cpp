// Replays every committed fuzz input (seeds and the inputs that once crashed a parser) through its target:
// each must be accepted or rejected with mha2mla::Error, never crash or throw anything else.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "fuzz/targets.h"

namespace fs = std::filesystem;
using namespace mha2mla;

namespace {

std::string corpus_dir(const std::string& target) { return MHA2MLA_SOURCE_DIR "/tests/fuzz/corpus/" + target; }

class FuzzCorpus : public ::testing::TestWithParam<std::string> {};

TEST_P(FuzzCorpus, EveryInputIsAcceptedOrCleanlyRejected) {
  const auto* t = fuzz::find_target(GetParam());
  ASSERT_NE(t, nullptr);
  const std::string dir = corpus_dir(GetParam());
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  int inputs = 0, accepted = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream f(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), {});
    SCOPED_TRACE(e.path().string());
    try {
      accepted += fuzz::run_one(*t, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const std::exception& ex) {
      ADD_FAILURE() << "escaped exception: " << ex.what();
    }
    ++inputs;
  }
  EXPECT_GT(inputs, 0) << "empty corpus " << dir;
  // The seeds are valid files: a target that rejects everything is not exercising its parser.
  EXPECT_GT(accepted, 0) << "no input of " << dir << " was accepted";
}

// Listed here, not taken from the registry: registration runs at static initialisation, in no fixed order
// relative to this file's.
const std::vector<std::string> kTargets = {"safetensors_header", "safetensors_index", "config_json",
                                           "tokenizer_json",     "tokenizer_encode",  "token_shard",
                                           "ds_metadata",        "calibration"};

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus, ::testing::ValuesIn(kTargets), [](const auto& info) { return info.param; });

TEST(FuzzTargets, EveryTargetIsRegisteredAndHasACorpus) {
  EXPECT_EQ(fuzz::targets().size(), kTargets.size());
  for (const auto& t : fuzz::targets()) {
    EXPECT_NE(std::find(kTargets.begin(), kTargets.end(), t.name), kTargets.end()) << t.name;
    EXPECT_TRUE(fs::is_directory(corpus_dir(t.name))) << t.name;
  }
}

}  // namespace
