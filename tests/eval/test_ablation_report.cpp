// The reproduce report: the paper's orderings judged on hand-made rows, the table, the plot, the row files.
#include <gtest/gtest.h>

#include "eval/ablation_report.h"
#include "util/error.h"

using namespace mha2mla;
using eval::AblationRow;

namespace {

AblationRow row(const std::string& id, const std::string& group, double red, double after) {
  AblationRow r;
  r.id = id;
  r.label = id;
  r.group = group;
  r.kv_reduction = red;
  r.ppl_before = 2 * after;
  r.ppl_after = after;
  return r;
}

std::vector<AblationRow> paper_like() {
  return {row("original", "original", 0, 56), row("baseline", "baseline", 0, 50),
          row("rope-high", "rope", 0, 52),    row("rope-low", "rope", 0, 60),
          row("rope-uniform", "rope", 0, 53), row("rope-2-norm", "rope", 0, 51),
          row("ladder-68.75", "ladder", 0.6875, 50.5), row("ladder-81.25", "ladder", 0.8125, 50.9),
          row("ladder-87.5", "ladder", 0.875, 52),     row("svd-split", "svd", 0.8125, 51.5),
          row("distill", "distill", 0.8125, 50.8),     row("ladder-81.25-int4", "int4", 0.947, 51.1)};
}

const eval::Ordering& claim(const std::vector<eval::Ordering>& os, const std::string& start) {
  for (const auto& o : os)
    if (o.claim.rfind(start, 0) == 0) return o;
  throw std::runtime_error("no claim " + start);
}

TEST(AblationReport, OrderingsHoldOnPaperLikeRows) {
  auto os = eval::check_orderings(paper_like());
  ASSERT_EQ(os.size(), 5u);
  for (const auto& o : os) {
    EXPECT_TRUE(o.measured) << o.claim;
    EXPECT_TRUE(o.holds) << o.claim << ": " << o.evidence;
  }
  // The best row at −81.25 % is the distilled one: 50.8 / 50 = 1.016.
  EXPECT_NE(claim(os, "recipe goal").evidence.find("distill 50.80 = ×1.016"), std::string::npos);
  EXPECT_NE(claim(os, "an int4 cache").evidence.find("ladder-81.25 ×1.004"), std::string::npos);
}

TEST(AblationReport, EachOrderingCanFail) {
  auto set = [](std::vector<AblationRow> rows, const std::string& id, double ppl) {
    for (auto& r : rows)
      if (r.id == id) r.ppl_after = ppl;
    return rows;
  };
  EXPECT_FALSE(claim(eval::check_orderings(set(paper_like(), "rope-low", 51.5)), "partial RoPE").holds);  // low beats high
  EXPECT_FALSE(claim(eval::check_orderings(set(paper_like(), "rope-2-norm", 52.5)), "partial RoPE").holds);
  EXPECT_FALSE(claim(eval::check_orderings(set(paper_like(), "svd-split", 50.0)), "joint SVD").holds);
  EXPECT_FALSE(claim(eval::check_orderings(set(paper_like(), "ladder-87.5", 50.7)), "a smaller latent").holds);
  EXPECT_FALSE(claim(eval::check_orderings(set(paper_like(), "ladder-81.25-int4", 52.0)), "an int4 cache").holds);
  auto far = set(set(paper_like(), "distill", 52), "ladder-81.25", 51.2);
  far = set(far, "svd-split", 51.3);
  EXPECT_FALSE(claim(eval::check_orderings(far), "recipe goal").holds);  // 51.2 / 50 = 1.024
  // Without the rows a claim needs, it is not measured.
  std::vector<AblationRow> few{row("baseline", "baseline", 0, 50)};
  for (const auto& o : eval::check_orderings(few)) EXPECT_FALSE(o.measured) << o.claim;
}

TEST(AblationReport, TableAndPlot) {
  auto rows = paper_like();
  rows[1].mc = 0.435;
  rows[1].mc_stderr = 0.025;
  const auto md = eval::ablation_markdown(rows, "title");
  EXPECT_NE(md.find("| baseline | 100 % | 100.00 | 50.00 | ×1.000 | 43.5 ± 2.5 | — |"), std::string::npos) << md;
  EXPECT_NE(md.find("| ladder-87.5 | −87.50 % | 104.00 | 52.00 | ×1.040 |"), std::string::npos) << md;
  EXPECT_NE(md.find("**holds**"), std::string::npos);
  const auto svg = eval::ablation_svg(rows, "title");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("2-norm + joint SVD (d_kv ladder)"), std::string::npos);
}

TEST(AblationReport, RowJsonRoundTripAndErrors) {
  auto r = paper_like()[7];
  r.mc = 0.4;
  r.mc_stderr = 0.02;
  r.retrieval = 12.5;
  r.retrieval_stderr = 5;
  auto back = AblationRow::from_json(r.to_json());
  EXPECT_EQ(back.to_json(), r.to_json());
  auto j = r.to_json();
  j.erase("ppl_after");
  try {
    AblationRow::from_json(j);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ppl_after"), std::string::npos);
  }
  j = r.to_json();
  j["kv_reduction"] = "big";
  EXPECT_THROW(AblationRow::from_json(j), Error);
}

}  // namespace
