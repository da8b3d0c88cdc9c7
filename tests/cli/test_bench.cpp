// mha2mla bench: repeated runs with their spread, and a plot that does not invent what it was not given.
#include <gtest/gtest.h>

#include <filesystem>
#include <iomanip>
#include <regex>
#include <sstream>

#include "testing/files.h"

namespace fs = std::filesystem;

namespace {

using mha2mla::testutil::run_cli;
using mha2mla::testutil::slurp;

const std::string kModel = MHA2MLA_SOURCE_DIR "/models/kjv-mha";

// The y tick labels of a chart: the numbers right-aligned left of the axis.
std::vector<std::string> y_ticks(const std::string& svg) {
  std::vector<std::string> t;
  std::regex tick("text-anchor='end'>([^<]*)</text>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tick); it != std::sregex_iterator(); ++it)
    t.push_back((*it)[1]);
  return t;
}

TEST(Bench, RepeatsEachCellAndReportsMedianAndRange) {
  const std::string d = mha2mla::testutil::temp_dir("bench-repeats");
  auto r = run_cli("bench --model " + kModel + " --cache-types f32,int8 --contexts 32 --steps 2 --repeats 3 --dtype f32 "
                   "--cache-residual 16 --cache-group 16 --out " + d + "/one --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["cells"].size(), 2u);
  for (const auto& c : j["cells"]) {
    EXPECT_EQ(c["repeats"], 3);
    EXPECT_LE(c["decode_tokens_per_s_min"].get<double>(), c["decode_tokens_per_s"].get<double>());
    EXPECT_LE(c["decode_tokens_per_s"].get<double>(), c["decode_tokens_per_s_max"].get<double>());
    EXPECT_GT(c["decode_tokens_per_s_min"].get<double>(), 0);
  }
  const std::string md = slurp(d + "/one.md");
  EXPECT_NE(md.find("the median of 3 timed runs per cell"), std::string::npos) << md;
  std::ostringstream range;
  range << std::fixed << std::setprecision(1) << j["cells"][0]["decode_tokens_per_s_min"].get<double>() << "–"
        << j["cells"][0]["decode_tokens_per_s_max"].get<double>();
  EXPECT_NE(md.find(range.str()), std::string::npos) << range.str() << "\n" << md;

  // One context: a bar per configuration (no x axis to invent), from zero, in plain numbers.
  const std::string bars = slurp(d + "/one.svg");
  EXPECT_EQ(bars.find("<polyline"), std::string::npos) << bars;
  EXPECT_NE(bars.find("model f32"), std::string::npos);
  EXPECT_NE(bars.find("model int8"), std::string::npos);
  auto ticks = y_ticks(bars);
  ASSERT_FALSE(ticks.empty());
  EXPECT_EQ(ticks.front(), "0");
  for (const auto& t : ticks) EXPECT_EQ(t.find('e'), std::string::npos) << t;
  // One bar per configuration (the background rect has no x).
  const std::regex bar("<rect x=");
  EXPECT_EQ(std::distance(std::sregex_iterator(bars.begin(), bars.end(), bar), std::sregex_iterator()), 2);

  // Several contexts: lines again, with a y axis from zero and plain tick labels on both axes.
  auto two = run_cli("bench --model " + kModel + " --cache-types f32 --contexts 16,1024 --steps 2 --repeats 1 "
                     "--dtype f32 --no-prefill --out " + d + "/two");
  ASSERT_EQ(two.code, 0) << two.err;
  const std::string lines = slurp(d + "/two.svg");
  EXPECT_NE(lines.find("<polyline"), std::string::npos);
  ticks = y_ticks(lines);
  ASSERT_FALSE(ticks.empty());
  EXPECT_EQ(ticks.front(), "0");
  EXPECT_EQ(lines.find("e+0"), std::string::npos) << lines;
  EXPECT_NE(lines.find(">1024</text>"), std::string::npos) << lines;
  fs::remove_all(d);
}

}  // namespace
