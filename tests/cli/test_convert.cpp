// docs/converting.md's walkthrough, run as written on the shipped model and corpus, with small settings so
// that it takes seconds: the doc cannot drift from what the commands do.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "testing/files.h"

namespace fs = std::filesystem;

namespace {

using mha2mla::testutil::slurp;

// The commands of the first ```sh block, continuation lines joined, comments and blank lines dropped.
std::vector<std::string> walkthrough_commands(const std::string& doc) {
  const size_t open = doc.find("```sh\n");
  EXPECT_NE(open, std::string::npos) << "no ```sh block";
  const size_t start = open + 6, end = doc.find("```", start);
  std::istringstream in(doc.substr(start, end - start));
  std::vector<std::string> cmds;
  std::string line, cur;
  while (std::getline(in, line)) {
    const size_t hash = line.find(" #");
    if (hash != std::string::npos) line = line.substr(0, hash);
    if (line.empty() || line[0] == '#') continue;
    if (line.back() == '\\') {
      cur += line.substr(0, line.size() - 1);
      continue;
    }
    cmds.push_back(cur + line);
    cur.clear();
  }
  return cmds;
}

struct Run {
  int code;
  std::string out;
};

Run run_in(const std::string& dir, const std::string& cmd) {
  FILE* p = popen(("cd '" + dir + "' && " + cmd + " 2>&1").c_str(), "r");
  Run r{1, ""};
  if (!p) return r;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, k);
  r.code = WEXITSTATUS(pclose(p));
  return r;
}

void keep_first_lines(const std::string& path, int n) {
  std::istringstream in(slurp(path));
  std::ostringstream out;
  std::string line;
  for (int i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
  mha2mla::testutil::write_file(path, out.str());
}

TEST(ConvertWalkthrough, RunsAsWrittenOnTheShippedFiles) {
  MHA2MLA_REQUIRE_ORACLE(std::system("command -v bible >/dev/null 2>&1") == 0,
                         "Debian's bible-kjv not installed (scripts/kjv.sh writes the corpus from it)");
  const auto cmds = walkthrough_commands(slurp(MHA2MLA_SOURCE_DIR "/docs/converting.md"));
  ASSERT_GE(cmds.size(), 6u);
  // The small settings: fewer calibration windows, optimizer steps and sequences per step. Each must be in the
  // doc as written, so a change there shows here.
  const std::vector<std::pair<std::string, std::string>> small{
      {"--samples 64", "--samples 4"}, {"--steps 200", "--steps 2"}, {"--batch 8", "--batch 2"}};
  for (const auto& [from, to] : small) {
    bool found = false;
    for (const auto& c : cmds) found = found || c.find(from) != std::string::npos;
    EXPECT_TRUE(found) << from << " is not in the walkthrough";
  }
  // The repository as a newcomer has it after scripts/build.sh: the binary, the models, the scripts.
  const std::string d = mha2mla::testutil::temp_dir("walkthrough");
  fs::create_directories(d + "/build");
  fs::create_symlink(MHA2MLA_CLI, d + "/build/mha2mla");
  fs::create_directory_symlink(MHA2MLA_SOURCE_DIR "/models", d + "/models");
  fs::create_directory_symlink(MHA2MLA_SOURCE_DIR "/scripts", d + "/scripts");

  std::vector<double> ppl;
  std::string convert_out;
  for (auto cmd : cmds) {
    for (const auto& [from, to] : small)
      for (size_t at; (at = cmd.find(from)) != std::string::npos;) cmd.replace(at, from.size(), to);
    auto r = run_in(d, cmd);
    ASSERT_EQ(r.code, 0) << cmd << "\n" << r.out;
    if (cmd.find("scripts/kjv.sh") != std::string::npos) {
      // A slice of the corpus: the first chapters of Genesis for training, of Ruth for held-out text.
      keep_first_lines(d + "/data/kjv/train.txt", 150);
      keep_first_lines(d + "/data/kjv/val.txt", 60);
    }
    std::smatch m;
    if (cmd.find("mha2mla ppl") != std::string::npos) {
      ASSERT_TRUE(std::regex_search(r.out, m, std::regex("ppl ([0-9.]+) "))) << r.out;
      ppl.push_back(std::stod(m[1]));
    }
    if (cmd.find("mha2mla convert") != std::string::npos) convert_out = r.out;
  }
  // original, converted, converted and fine-tuned
  ASSERT_EQ(ppl.size(), 3u);
  EXPECT_GT(ppl[1], ppl[0] * 1.2) << "the conversion should cost perplexity before fine-tuning";
  // convert ends with what comes next, naming this conversion.
  EXPECT_NE(convert_out.find("next: until the recovery fine-tune"), std::string::npos) << convert_out;
  EXPECT_NE(convert_out.find("mha2mla finetune --model models/kjv-mha --mla runs/walk/mla"), std::string::npos)
      << convert_out;
  EXPECT_TRUE(fs::exists(d + "/runs/walk/mla-ft/mla/model/config.json"));
  fs::remove_all(d);
}

}  // namespace
