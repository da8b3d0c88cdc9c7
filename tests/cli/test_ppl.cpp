// mha2mla ppl on texts too short to mean much.
#include <gtest/gtest.h>

#include <filesystem>

#include "testing/files.h"

namespace {

using mha2mla::testutil::run_cli;

const std::string kModel = MHA2MLA_SOURCE_DIR "/models/kjv-mha";

// One predicted token is one draw, not a perplexity: the number still comes, with a warning beside it.
TEST(Ppl, WarnsWhenFewTokensArePredicted) {
  const std::string d = mha2mla::testutil::temp_dir("ppl-few");
  mha2mla::testutil::write_file(d + "/one.txt", "In the");  // two tokens: one predicted
  std::string text;
  for (int i = 0; i < 40; ++i) text += "In the beginning God created the heaven and the earth.\n";
  mha2mla::testutil::write_file(d + "/long.txt", text);
  auto one = run_cli("ppl --json --model " + kModel + " --text " + d + "/one.txt");
  ASSERT_EQ(one.code, 0) << one.err;
  EXPECT_EQ(nlohmann::json::parse(one.out)["tokens"], 1);
  EXPECT_NE(one.err.find("warning: " + d + "/one.txt gives only 1 predicted token: this perplexity says little"),
            std::string::npos)
      << one.err;
  auto many = run_cli("ppl --json --model " + kModel + " --text " + d + "/long.txt --ctx 128");
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_GE(nlohmann::json::parse(many.out)["tokens"].get<int64_t>(), 100);
  EXPECT_EQ(many.err.find("warning"), std::string::npos) << many.err;
  std::filesystem::remove_all(d);
}

}  // namespace
