// Peak resident memory: the helper against /proc/self/status read here, its growth with memory actually touched,
// and the commands' peak_rss_bytes against the kernel's own account of the child (getrusage ru_maxrss).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "testing/files.h"
#include "util/memory.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

int64_t status_kib(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string k;
  while (f >> k) {
    if (k == key + ":") {
      int64_t v;
      f >> v;
      return v;
    }
    std::getline(f, k);
  }
  return -1;
}

TEST(PeakRss, MatchesProcStatusAndGrowsWithTouchedMemory) {
  const int64_t before = peak_rss_bytes();
  const int64_t hwm = status_kib("VmHWM");
  ASSERT_GT(hwm, 0) << "no VmHWM in /proc/self/status";
  // Reading the file may itself touch a page or two, so the two reads agree within 1 MiB.
  EXPECT_NEAR(before, hwm * 1024, 1 << 20);
  EXPECT_GT(current_rss_bytes(), 0);
  // The kernel refreshes VmHWM lazily; another thread (a sanitizer's) may free pages between the two reads.
  EXPECT_LE(current_rss_bytes(), peak_rss_bytes() + (1 << 20));

  // 256 MiB more than the peak so far, every page written: the peak must rise by about that much.
  const size_t n = static_cast<size_t>(before) + (256u << 20);
  std::vector<char> big(n);
  for (size_t i = 0; i < n; i += 4096) big[i] = static_cast<char>(i);
  const int64_t after = peak_rss_bytes();
  EXPECT_NEAR(after, status_kib("VmHWM") * 1024, 1 << 20);
  EXPECT_GE(after, static_cast<int64_t>(n));
  // AddressSanitizer's shadow adds one byte per 8 touched.
  EXPECT_LE(after, static_cast<int64_t>(n + n / 8) + before + (64 << 20));
  volatile char sink = big[n / 2];
  (void)sink;
}

// The command's report against the kernel's maximum RSS of the finished child (this test's only child
// besides the shell that starts it, which is far smaller). Run it in a process of its own (ctest does): a
// forked child starts with its parent's resident pages, so a big parent would raise the kernel's figure.
TEST(PeakRss, CommandReportMatchesTheKernel) {
  if (!fs::exists(MHA2MLA_CLI)) GTEST_SKIP() << "build the mha2mla target first";
  auto dir = testutil::temp_dir("peak-rss");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "In the beginning God created the heaven and the earth. ";
  testutil::write_file(dir + "/t.txt", text);
  auto r = testutil::run_cli("ppl --model " MHA2MLA_SOURCE_DIR "/models/kjv-mha --text " + dir +
                             "/t.txt --ctx 128 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.contains("peak_rss_bytes")) << r.out;
  const int64_t reported = j["peak_rss_bytes"].get<int64_t>();
  struct rusage ru {};
  ASSERT_EQ(getrusage(RUSAGE_CHILDREN, &ru), 0);
  const int64_t kernel = static_cast<int64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
  // Read at the end of the run, so at most what the kernel saw over the whole life of the process, and close to it.
  EXPECT_LE(reported, kernel);
  EXPECT_GE(reported, kernel * 9 / 10) << "reported " << reported << ", kernel " << kernel;
  EXPECT_GT(reported, 10 << 20);  // the runtime and a 5M-parameter model

  // The human-readable line ends with it too.
  auto plain = testutil::run_cli("ppl --model " MHA2MLA_SOURCE_DIR "/models/kjv-mha --text " + dir + "/t.txt --ctx 128");
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_NE(plain.out.find("peak memory "), std::string::npos) << plain.out;
  fs::remove_all(dir);
}

}  // namespace
