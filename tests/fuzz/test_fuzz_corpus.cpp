// Replays every committed fuzz input (seeds and the inputs that once crashed a parser) through its target:
// each must be accepted or rejected with mha2mla::Error, never crash or throw anything else.
#include <gtest/gtest.h>

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

std::vector<std::string> names() {
  std::vector<std::string> v;
  for (const auto& t : fuzz::targets()) v.push_back(t.name);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus, ::testing::ValuesIn(names()),
                         [](const auto& info) { return info.param; });

}  // namespace
