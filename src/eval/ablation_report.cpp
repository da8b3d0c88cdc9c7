#include "eval/ablation_report.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "util/error.h"
#include "util/svg_chart.h"

namespace mha2mla::eval {

namespace {

const AblationRow* find(const std::vector<AblationRow>& rows, const std::string& id) {
  for (const auto& r : rows)
    if (r.id == id) return &r;
  return nullptr;
}

std::string num(double x, int digits = 2) {
  char b[64];
  std::snprintf(b, sizeof(b), "%.*f", digits, x);
  return b;
}

std::string pct(double x) { return num(100.0 * x, 2) + " %"; }

template <typename T>
T get(const nlohmann::json& j, const std::string& k) {
  check(j.is_object() && j.contains(k), "missing field \"" + k + "\"");
  try {
    return j.at(k).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("field \"" + k + "\" has the wrong type");
  }
}

}  // namespace

nlohmann::json AblationRow::to_json() const {
  nlohmann::json j{{"id", id},
                   {"label", label},
                   {"group", group},
                   {"kv_reduction", kv_reduction},
                   {"ppl_before", ppl_before},
                   {"ppl_after", ppl_after},
                   {"seconds", seconds}};
  if (mc >= 0) j["kjv_mc"] = {{"acc_norm_nospace", mc}, {"acc_norm_nospace_stderr", mc_stderr}};
  if (retrieval >= 0) j["kjv_retrieval"] = {{"score", retrieval}, {"score_stderr", retrieval_stderr}};
  return j;
}

AblationRow AblationRow::from_json(const nlohmann::json& j) {
  AblationRow r;
  r.id = get<std::string>(j, "id");
  r.label = get<std::string>(j, "label");
  r.group = get<std::string>(j, "group");
  r.kv_reduction = get<double>(j, "kv_reduction");
  r.ppl_before = get<double>(j, "ppl_before");
  r.ppl_after = get<double>(j, "ppl_after");
  r.seconds = get<double>(j, "seconds");
  if (j.contains("kjv_mc")) {
    r.mc = get<double>(j["kjv_mc"], "acc_norm_nospace");
    r.mc_stderr = get<double>(j["kjv_mc"], "acc_norm_nospace_stderr");
  }
  if (j.contains("kjv_retrieval")) {
    r.retrieval = get<double>(j["kjv_retrieval"], "score");
    r.retrieval_stderr = get<double>(j["kjv_retrieval"], "score_stderr");
  }
  return r;
}

std::vector<Ordering> check_orderings(const std::vector<AblationRow>& rows) {
  std::vector<Ordering> out;
  auto ppl = [&](const std::string& id) { return find(rows, id) ? find(rows, id)->ppl_after : -1.0; };
  {
    Ordering o{"partial RoPE: 2-norm ≥ high/uniform > low (lower ppl is better)", false, false, ""};
    const double n = ppl("rope-2-norm"), h = ppl("rope-high"), u = ppl("rope-uniform"), l = ppl("rope-low");
    if (n > 0 && h > 0 && u > 0 && l > 0) {
      o.measured = true;
      o.holds = n <= std::min(h, u) && std::max(h, u) < l;
      o.evidence = "2-norm " + num(n) + ", high " + num(h) + ", uniform " + num(u) + ", low " + num(l);
    }
    out.push_back(o);
  }
  {
    Ordering o{"joint SVD beats split SVD at the same cache size", false, false, ""};
    const double j = ppl("ladder-81.25"), s = ppl("svd-split");
    if (j > 0 && s > 0) {
      o.measured = true;
      o.holds = j < s;
      o.evidence = "joint " + num(j) + ", split " + num(s);
    }
    out.push_back(o);
  }
  {
    Ordering o{"a smaller latent costs more (ppl rises along the d_kv ladder)", false, false, ""};
    const double a = ppl("ladder-68.75"), b = ppl("ladder-81.25"), c = ppl("ladder-87.5");
    if (a > 0 && b > 0 && c > 0) {
      o.measured = true;
      o.holds = a < b && b < c;
      o.evidence = "−68.75 % " + num(a) + ", −81.25 % " + num(b) + ", −87.5 % " + num(c);
    }
    out.push_back(o);
  }
  {
    Ordering o{"an int4 cache costs little (≤ 2 % ppl at every point)", false, false, ""};
    double worst = 0;
    int n = 0;
    std::string ev;
    for (const auto& r : rows) {
      if (r.group != "int4") continue;
      const std::string src = r.id.substr(0, r.id.size() - 5);  // "-int4"
      const auto* s = find(rows, src);
      if (!s) continue;
      const double ratio = r.ppl_after / s->ppl_after;
      worst = std::max(worst, ratio);
      ev += (n++ ? ", " : "") + src + " ×" + num(ratio, 3);
    }
    if (n > 0) {
      o.measured = true;
      o.holds = worst <= 1.02;
      o.evidence = ev;
    }
    out.push_back(o);
  }
  {
    Ordering o{"recipe goal: the best variant at −81.25 % is within 1.02× the fair baseline's ppl", false, false, ""};
    const auto* base = find(rows, "baseline");
    const AblationRow* best = nullptr;
    for (const auto& r : rows)
      if (r.group != "int4" && r.group != "rope" && std::abs(r.kv_reduction - 0.8125) < 1e-6 &&
          (!best || r.ppl_after < best->ppl_after))
        best = &r;
    if (base && best) {
      o.measured = true;
      o.holds = best->ppl_after <= 1.02 * base->ppl_after;
      o.evidence = best->id + " " + num(best->ppl_after) + " = ×" + num(best->ppl_after / base->ppl_after, 3) +
                   " the baseline's " + num(base->ppl_after);
    }
    out.push_back(o);
  }
  return out;
}

std::string ablation_markdown(const std::vector<AblationRow>& rows, const std::string& title) {
  const auto* base = find(rows, "baseline");
  std::string s = "### " + title + "\n\n";
  s += "| variant | KV cache | ppl before | ppl after | after / baseline | kjv_mc acc_norm_nospace | kjv_retrieval |\n";
  s += "|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    s += "| " + r.label + " | " + (r.kv_reduction == 0 ? std::string("100 %") : "−" + pct(r.kv_reduction)) + " | ";
    s += num(r.ppl_before) + " | " + num(r.ppl_after) + " | ";
    s += (base && r.group != "original" ? "×" + num(r.ppl_after / base->ppl_after, 3) : std::string("")) + " | ";
    s += (r.mc >= 0 ? num(100 * r.mc, 1) + " ± " + num(100 * r.mc_stderr, 1) : std::string("—")) + " | ";
    s += (r.retrieval >= 0 ? num(r.retrieval, 1) + " ± " + num(r.retrieval_stderr, 1) : std::string("—")) + " |\n";
  }
  s += "\n";
  for (const auto& o : check_orderings(rows))
    s += "* " + o.claim + ": " + (!o.measured ? std::string("not measured") : o.holds ? "**holds**" : "**does not hold**") +
         (o.evidence.empty() ? "" : " (" + o.evidence + ")") + "\n";
  return s;
}

std::string ablation_svg(const std::vector<AblationRow>& rows, const std::string& title) {
  Chart c;
  c.title = title;
  c.x_label = "KV cache reduction (%)";
  c.y_label = "held-out perplexity after fine-tuning";
  // One series per strategy; single-point strategies are drawn as markers.
  std::map<std::string, std::string> names{{"original", "original"},
                                           {"baseline", "fair baseline"},
                                           {"ladder", "2-norm + joint SVD (d_kv ladder)"},
                                           {"int4", "int4 cache (baseline and ladder)"},
                                           {"svd", "other factorisations at −81.25 %"},
                                           {"distill", "distillation at −81.25 %"}};
  // The partial-RoPE-only rows all sit at 0 % and one of them far above the rest: the table has them.
  std::vector<std::string> order{"original", "baseline", "ladder", "svd", "distill", "int4"};
  for (const auto& g : order) {
    ChartSeries se{names[g], {}, true};
    for (const auto& r : rows)
      if (r.group == g) se.points.emplace_back(100.0 * r.kv_reduction, r.ppl_after);
    std::sort(se.points.begin(), se.points.end());
    if (!se.points.empty()) c.series.push_back(se);
  }
  return c.svg();
}

}  // namespace mha2mla::eval
