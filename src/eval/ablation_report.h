#pragma once
// The report of `mha2mla reproduce`: one row per variant of the paper's ablations (fair baseline, partial
// RoPE strategies, joint vs split SVD, the d_kv ladder, int4 caches, distillation), written as JSON, a
// Markdown table and an SVG plot, with the paper's orderings checked on the measured numbers.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mha2mla::eval {

struct AblationRow {
  std::string id;     // "baseline", "rope-high", "ladder-81.25", "ladder-81.25-int4", ...
  std::string label;  // what the table shows
  std::string group;  // original | baseline | rope | svd | ladder | int4 | distill
  double kv_reduction = 0;             // 1 − cache bytes / the original's 16-bit cache bytes
  double ppl_before = 0, ppl_after = 0;  // held-out perplexity before and after fine-tuning
  double mc = -1, mc_stderr = 0;         // kjv-mc acc_norm_nospace (−1: not measured)
  double retrieval = -1, retrieval_stderr = 0;  // kjv-retrieval score ×100 (−1: not measured)
  double seconds = 0;
  nlohmann::json to_json() const;
  static AblationRow from_json(const nlohmann::json& j);  // errors name the field
};

// One of the paper's claims, judged on the rows: whether it holds here and the numbers behind it.
struct Ordering {
  std::string claim;
  bool measured = false;  // false when a row it needs is missing
  bool holds = false;
  std::string evidence;
};
// 2-norm ≥ high/uniform > low; joint > split; a smaller latent costs more; int4 costs little (≤ 2 % ppl);
// and the recipe goal: the best variant at −81.25 % within 1.02× the fair baseline.
std::vector<Ordering> check_orderings(const std::vector<AblationRow>& rows);

// A Markdown table of the rows (ratio to the fair baseline's ppl after fine-tuning), then the orderings.
std::string ablation_markdown(const std::vector<AblationRow>& rows, const std::string& title);
// Held-out ppl after fine-tuning against KV cache reduction, one series per strategy (the partial-RoPE-only
// rows, all at 0 %, are left to the table).
std::string ablation_svg(const std::vector<AblationRow>& rows, const std::string& title);

}  // namespace mha2mla::eval
