#pragma once
// Test helpers without tensors: temp folders, whole-file I/O, expected errors, and running the CLI.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "util/error.h"

// Skips the test when an independent oracle (python3-torch, node + npm packages) is missing; under CI, fails.
#define MHA2MLA_REQUIRE_ORACLE(available, why)                                                        \
  do {                                                                                                \
    if (!(available)) {                                                                               \
      if (::mha2mla::testutil::under_ci()) FAIL() << (why) << " (CI=true: scripts/setup.sh must install it)"; \
      GTEST_SKIP() << (why);                                                                          \
    }                                                                                                 \
  } while (0)

namespace mha2mla::testutil {

// A fresh, empty folder unique to this process and tag.
inline std::string temp_dir(const std::string& tag) {
  auto base = std::filesystem::temp_directory_path() / ("mha2mla-test-" + tag + "-" + std::to_string(getpid()));
  std::filesystem::remove_all(base);
  std::filesystem::create_directories(base);
  return base.string();
}

// Under CI (CI=true or 1) every oracle is installed by scripts/setup.sh, so a test that would skip fails.
inline bool under_ci() {
  const char* c = std::getenv("CI");
  return c && (std::string(c) == "true" || std::string(c) == "1");
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The message of the mha2mla::Error that fn throws; fails the test (and returns "(no error)") if it throws none.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "(no error)";
}

// fn must throw mha2mla::Error whose message contains needle.
inline void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an error mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

#ifdef MHA2MLA_CLI
struct CliResult {
  int code;
  std::string out, err;
};

// Runs the mha2mla binary with a shell command line; stdout and stderr captured separately.
inline CliResult run_cli(const std::string& args, const std::string& stdin_file = "") {
  static int n = 0;
  std::string errf = std::filesystem::temp_directory_path() /
                     ("mha2mla-cli-err-" + std::to_string(getpid()) + "-" + std::to_string(n++));
  std::string cmd = std::string(MHA2MLA_CLI) + " " + args + " 2>" + errf;
  if (!stdin_file.empty()) cmd += " <" + stdin_file;
  FILE* p = popen(cmd.c_str(), "r");
  CliResult r;
  std::array<char, 4096> buf;
  size_t k;
  while ((k = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), k);
  r.code = WEXITSTATUS(pclose(p));
  r.err = slurp(errf);
  std::filesystem::remove(errf);
  return r;
}

// A failed run that printed exactly one "error: ..." line containing needle.
inline void expect_one_line_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "error must be one line: " << r.err;
}
#endif

}  // namespace mha2mla::testutil
