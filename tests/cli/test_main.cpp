// What every command shares: the exit-status scheme, --version, typo suggestions, and one message for a
// --model that is not a model folder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "testing/files.h"

namespace fs = std::filesystem;

namespace {

using mha2mla::testutil::expect_one_line_error;
using mha2mla::testutil::run_cli;

const std::string kModel = MHA2MLA_SOURCE_DIR "/models/kjv-mha";

// 2: the command line is wrong; 1: the command ran and failed. The top-level help documents it.
TEST(Main, ExitStatusTellsUsageErrorsFromFailures) {
  auto h = run_cli("--help");
  ASSERT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("Exit status: 0 success, 1 the command failed"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("2 the command line"), std::string::npos) << h.out;
  for (const char* usage : {"frobnicate",                                          // unknown command
                            "generate --model M --promt hi",                       // unknown option
                            "generate --model M",                                  // missing required option
                            "generate --model M --prompt hi --max-new x",          // malformed value
                            "generate --model M --prompt hi --max-new 0",          // out of range
                            "generate --model M --prompt hi --cache-type int3",    // rejected by a setter
                            "generate --model M --prompt hi --json 1",             // value given to a flag
                            "generate --model M --prompt hi --top-p 1.5",          // checked after parsing
                            "convert --model M --out O --rope high --rope-dims 8 --dkv 4 --svd jiont",
                            "ppl --model M --text t --cache-type int8 --chunk 0",  // options that contradict
                            "convert --model M --out O --rope high --rope-dims 8 --svd joint"}) {  // no --dkv
    auto r = run_cli(usage);
    EXPECT_EQ(r.code, 2) << usage << ": " << r.err;
    expect_one_line_error(r, "error: ");
  }
  auto r = run_cli("");
  EXPECT_EQ(r.code, 2);  // no command at all
  for (const std::string& failure : std::vector<std::string>{"generate --model /nonexistent/m --prompt hi",
                                                             "ppl --model " + kModel + " --text /nonexistent.txt"}) {
    auto f = run_cli(failure);
    EXPECT_EQ(f.code, 1) << failure << ": " << f.err;
    expect_one_line_error(f, "error: ");
  }
}

TEST(Main, Version) {
  auto r = run_cli("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("mha2mla ", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("libtorch 1."), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

// A near miss gets the nearest name; the command is named once, not twice.
TEST(Main, UnknownNamesSuggestTheNearest) {
  auto r = run_cli("generate --model " + kModel + " --promt hi");
  expect_one_line_error(r, "unknown option --promt (did you mean --prompt?)");
  EXPECT_EQ(r.err.rfind("mha2mla generate: error: unknown option", 0), 0u) << r.err;
  expect_one_line_error(run_cli("ppl --model " + kModel + " --text t --strid 3"), "(did you mean --stride?)");
  expect_one_line_error(run_cli("genrate --model " + kModel), "unknown command \"genrate\" (did you mean generate?)");
  // Nothing close: no suggestion, the pointer to --help instead.
  auto far = run_cli("generate --model " + kModel + " --prompt hi --zzzzzz 1");
  expect_one_line_error(far, "unknown option --zzzzzz (see mha2mla generate --help)");
  EXPECT_EQ(far.err.find("did you mean"), std::string::npos) << far.err;
}

// Every command that takes --model says the same thing about the same wrong folder: its name, and what is
// missing in it.
TEST(Main, OneMessageForAWrongModelFolder) {
  const std::string d = mha2mla::testutil::temp_dir("model-folder");
  mha2mla::testutil::write_file(d + "/t.txt", "In the beginning God created the heaven and the earth.\n");
  mha2mla::testutil::write_file(d + "/a-file", "not a model\n");
  fs::create_directories(d + "/no-tokenizer");
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(kModel + "/" + f, d + "/no-tokenizer/" + f);
  fs::create_directories(d + "/empty");
  const std::vector<std::string> commands{
      "generate --prompt hi --model ",
      "ppl --text " + d + "/t.txt --model ",
      "calibrate --text " + d + "/t.txt --out " + d + "/c --model ",
      "eval --task mc --data " + d + "/t.txt --model ",
      "convert --out " + d + "/out --rope high --rope-dims 8 --dkv 16 --svd joint --model ",
      "inspect --model "};
  for (const auto& c : commands) {
    expect_one_line_error(run_cli(c + d + "/missing"), "model folder not found: " + d + "/missing");
    expect_one_line_error(run_cli(c + d + "/a-file"), d + "/a-file is not a folder");
  }
  for (size_t i : {0, 4})
    expect_one_line_error(run_cli(commands[i] + d + "/empty"), "model folder " + d + "/empty has no config.json");
  // The tokenizer is named where the command needs one.
  for (size_t i = 0; i < 4; ++i)
    expect_one_line_error(run_cli(commands[i] + d + "/no-tokenizer"),
                          "model folder " + d + "/no-tokenizer has no tokenizer.json");
  fs::remove(d + "/no-tokenizer/model.safetensors");
  expect_one_line_error(run_cli("inspect --model " + d + "/no-tokenizer"),
                        "model folder " + d + "/no-tokenizer has no weights (model.safetensors");
  EXPECT_FALSE(fs::exists(d + "/out"));
  fs::remove_all(d);
}

// The multiple-choice task names are in eval --help, not only in the README.
TEST(Main, EvalHelpNamesTheTasks) {
  auto h = run_cli("eval --help");
  ASSERT_EQ(h.code, 0);
  const size_t at = h.out.find("  --task NAME");
  ASSERT_NE(at, std::string::npos) << h.out;
  const std::string row = h.out.substr(at, h.out.find("\n  --", at + 1) - at);
  EXPECT_NE(row.find("mc, arc, hellaswag, piqa, openbookqa, winogrande, mmlu, longbench"), std::string::npos) << row;
}

}  // namespace
