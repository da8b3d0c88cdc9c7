#include "eval/longbench_metrics.h"

#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>

#include "eval/string_similarity.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace mha2mla::eval {

namespace {

bool is_ascii_punct(uint32_t c) { return c < 128 && std::ispunct(static_cast<int>(c)); }

// Python's str.isspace() for the characters that occur in practice.
bool is_space(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Python's \w: letters, digits and underscore (any script).
bool is_word(uint32_t c) {
  if (c < 128) return std::isalnum(static_cast<int>(c)) || c == '_';
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) || cat == UTF8PROC_CATEGORY_MN ||
         cat == UTF8PROC_CATEGORY_MC;
}

std::string to_utf8(const std::vector<uint32_t>& cps) {
  std::string s;
  for (uint32_t c : cps) tok::append_utf8(s, c);
  return s;
}

// str.split(): runs of whitespace separate, no empty pieces.
std::vector<std::vector<uint32_t>> split_ws(const std::vector<uint32_t>& s) {
  std::vector<std::vector<uint32_t>> out;
  std::vector<uint32_t> cur;
  for (uint32_t c : s) {
    if (is_space(c)) {
      if (!cur.empty()) out.push_back(std::move(cur)), cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> out;
  for (const auto& w : split_ws(code_points(s))) out.push_back(to_utf8(w));
  return out;
}

// The decimal numbers of re.findall(r"\d+", s) (ASCII digits).
std::vector<std::string> numbers(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      cur += c;
    } else if (!cur.empty()) {
      out.push_back(cur), cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

double fraction_equal(const std::vector<std::string>& nums, const std::string& want) {
  if (nums.empty()) return 0.0;
  return static_cast<double>(std::count(nums.begin(), nums.end(), want)) / static_cast<double>(nums.size());
}

// Python's str.split(sep) for a single-character separator: keeps empty pieces.
std::vector<std::string> split_on(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

// The rouge package's sentences: split on '.', drop empty pieces, collapse whitespace inside each.
std::vector<std::vector<std::string>> rouge_sentences(const std::string& text) {
  std::vector<std::vector<std::string>> out;
  for (const auto& piece : split_on(text, '.')) {
    if (piece.empty()) continue;
    std::string joined;
    for (const auto& w : split_words(piece)) joined += (joined.empty() ? "" : " ") + w;
    out.push_back(split_on(joined, ' '));  // "".split(" ") is [""]: a sentence of one empty word, as in Python
  }
  return out;
}

// One LCS of x and y as the rouge package reconstructs it: walking back from the end, taking equal items,
// else moving up when table[i-1][j] > table[i][j-1], else left. The package keeps only the words.
std::vector<std::string> recon_lcs(const std::vector<std::string>& x, const std::vector<std::string>& y) {
  const size_t n = x.size(), m = y.size();
  std::vector<std::vector<int>> t(n + 1, std::vector<int>(m + 1, 0));
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j)
      t[i][j] = x[i - 1] == y[j - 1] ? t[i - 1][j - 1] + 1 : std::max(t[i - 1][j], t[i][j - 1]);
  std::vector<std::string> out;
  size_t i = n, j = m;
  while (i > 0 && j > 0) {
    if (x[i - 1] == y[j - 1]) {
      out.push_back(x[i - 1]);
      --i, --j;
    } else if (t[i - 1][j] > t[i][j - 1]) {
      --i;
    } else {
      --j;
    }
  }
  return out;
}

}  // namespace

std::string normalize_answer(const std::string& s) {
  std::vector<uint32_t> cps;
  for (uint32_t c : code_points(s)) {
    c = static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
    if (!is_ascii_punct(c)) cps.push_back(c);
  }
  // \b(a|an|the)\b -> " "
  std::vector<uint32_t> out;
  const size_t n = cps.size();
  for (size_t i = 0; i < n;) {
    bool replaced = false;
    if (i == 0 || !is_word(cps[i - 1])) {
      for (const char* art : {"the", "an", "a"}) {  // alternatives in regex order give the same result here
        const size_t len = std::strlen(art);
        if (i + len > n) continue;
        bool eq = true;
        for (size_t k = 0; k < len; ++k) eq = eq && cps[i + k] == static_cast<uint32_t>(art[k]);
        if (eq && (i + len == n || !is_word(cps[i + len]))) {
          out.push_back(' ');
          i += len;
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(cps[i++]);
  }
  std::string r;
  for (const auto& w : split_ws(out)) r += (r.empty() ? "" : " ") + to_utf8(w);
  return r;
}

double qa_f1_score(const std::string& pred, const std::string& truth) {
  auto p = split_words(normalize_answer(pred)), g = split_words(normalize_answer(truth));
  std::map<std::string, int64_t> cp, cg;
  for (const auto& w : p) ++cp[w];
  for (const auto& w : g) ++cg[w];
  int64_t same = 0;
  for (const auto& [w, c] : cp) {
    auto it = cg.find(w);
    if (it != cg.end()) same += std::min(c, it->second);
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(p.size());
  const double recall = static_cast<double>(same) / static_cast<double>(g.size());
  return 2 * precision * recall / (precision + recall);
}

double rouge_score(const std::string& pred, const std::string& truth) {
  // The package refuses an empty hypothesis or reference; LongBench turns that into 0.
  if (pred.empty() || truth.empty()) return 0.0;
  auto hyp = rouge_sentences(pred), ref = rouge_sentences(truth);
  if (hyp.empty() || ref.empty()) return 0.0;
  std::set<std::string> ref_words, hyp_words;
  for (const auto& s : ref) ref_words.insert(s.begin(), s.end());
  for (const auto& s : hyp) hyp_words.insert(s.begin(), s.end());
  // Union LCS per reference sentence, as sets of words (the package's exclusive mode); the running union carries
  // over reference sentences, so a word counts once in all.
  std::set<std::string> seen;
  int64_t lcs = 0;
  for (const auto& r : ref) {
    const size_t before = seen.size();
    for (const auto& h : hyp)
      for (auto& t : recon_lcs(r, h)) seen.insert(std::move(t));
    lcs += static_cast<int64_t>(seen.size() - before);
  }
  const double recall = static_cast<double>(lcs) / static_cast<double>(ref_words.size());
  const double precision = static_cast<double>(lcs) / static_cast<double>(hyp_words.size());
  return 2.0 * (precision * recall / (precision + recall + 1e-8));
}

double classification_score(const std::string& pred, const std::string& truth, const std::vector<std::string>& all_classes) {
  std::vector<std::string> matches;
  for (const auto& c : all_classes)
    if (pred.find(c) != std::string::npos) matches.push_back(c);
  // The reference removes items from the list it iterates over, so the item after each removal is skipped.
  for (size_t i = 0; i < matches.size(); ++i) {
    const std::string term = matches[i];
    if (truth.find(term) != std::string::npos && term != truth)
      matches.erase(std::find(matches.begin(), matches.end(), term));
  }
  if (std::find(matches.begin(), matches.end(), truth) == matches.end()) return 0.0;
  return 1.0 / static_cast<double>(matches.size());
}

double retrieval_score(const std::string& pred, const std::string& truth) {
  const std::string key = "Paragraph ";
  size_t p = 0;
  while ((p = truth.find(key, p)) != std::string::npos) {
    size_t q = p + key.size(), e = q;
    while (e < truth.size() && truth[e] >= '0' && truth[e] <= '9') ++e;
    if (e > q) return fraction_equal(numbers(pred), truth.substr(q, e - q));
    p = q;
  }
  fail("retrieval answer \"" + truth + "\" holds no \"Paragraph N\"");
}

double count_score(const std::string& pred, const std::string& truth) { return fraction_equal(numbers(pred), truth); }

double code_sim_score(const std::string& pred, const std::string& truth) {
  size_t start = pred.find_first_not_of('\n');
  std::string line;
  if (start != std::string::npos) {
    for (const auto& l : split_on(pred.substr(start), '\n')) {
      if (l.find('`') == std::string::npos && l.find('#') == std::string::npos && l.find("//") == std::string::npos) {
        line = l;
        break;
      }
    }
  }
  return fuzz_ratio(line, truth) / 100.0;
}

double longbench_metric(const std::string& metric, const std::string& pred, const std::string& truth,
                        const std::vector<std::string>& all_classes) {
  if (metric == "qa_f1_score") return qa_f1_score(pred, truth);
  if (metric == "rouge_score") return rouge_score(pred, truth);
  if (metric == "classification_score") return classification_score(pred, truth, all_classes);
  if (metric == "retrieval_score") return retrieval_score(pred, truth);
  if (metric == "count_score") return count_score(pred, truth);
  if (metric == "code_sim_score") return code_sim_score(pred, truth);
  fail("unknown metric \"" + metric + "\"");
}

}  // namespace mha2mla::eval
