#include "eval/string_similarity.h"

#include <array>
#include <cmath>
#include <unordered_map>

#include "tokenizer/unicode.h"

namespace mha2mla::eval {

std::vector<uint32_t> code_points(const std::string& utf8) {
  const std::string s = tok::find_invalid_utf8(utf8) == std::string::npos ? utf8 : tok::utf8_lossy(utf8);
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(tok::next_cp(s, i));
  return out;
}

namespace {

struct Matcher {
  const std::vector<uint32_t>& a;
  const std::vector<uint32_t>& b;
  std::unordered_map<uint32_t, std::vector<int64_t>> b2j;  // item -> increasing positions in b (popular items removed)

  Matcher(const std::vector<uint32_t>& a_, const std::vector<uint32_t>& b_) : a(a_), b(b_) {
    const int64_t n = static_cast<int64_t>(b.size());
    for (int64_t j = 0; j < n; ++j) b2j[b[j]].push_back(j);
    if (n >= 200) {
      const size_t ntest = static_cast<size_t>(n / 100 + 1);
      for (auto it = b2j.begin(); it != b2j.end();) it = it->second.size() > ntest ? b2j.erase(it) : std::next(it);
    }
  }

  // difflib's find_longest_match without junk: the earliest longest block, then extended over popular items.
  void longest(int64_t alo, int64_t ahi, int64_t blo, int64_t bhi, int64_t& bi, int64_t& bj, int64_t& bk) const {
    bi = alo, bj = blo, bk = 0;
    std::unordered_map<int64_t, int64_t> j2len, next;
    for (int64_t i = alo; i < ahi; ++i) {
      next.clear();
      auto it = b2j.find(a[i]);
      if (it != b2j.end()) {
        for (int64_t j : it->second) {
          if (j < blo) continue;
          if (j >= bhi) break;
          auto prev = j2len.find(j - 1);
          const int64_t k = (prev == j2len.end() ? 0 : prev->second) + 1;
          next[j] = k;
          if (k > bk) bi = i - k + 1, bj = j - k + 1, bk = k;
        }
      }
      std::swap(j2len, next);
    }
    while (bi > alo && bj > blo && a[bi - 1] == b[bj - 1]) --bi, --bj, ++bk;
    while (bi + bk < ahi && bj + bk < bhi && a[bi + bk] == b[bj + bk]) ++bk;
  }
};

}  // namespace

int64_t sequence_matches(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  Matcher m(a, b);
  int64_t total = 0;
  std::vector<std::array<int64_t, 4>> queue{{0, static_cast<int64_t>(a.size()), 0, static_cast<int64_t>(b.size())}};
  while (!queue.empty()) {
    auto [alo, ahi, blo, bhi] = queue.back();
    queue.pop_back();
    int64_t i, j, k;
    m.longest(alo, ahi, blo, bhi, i, j, k);
    if (k == 0) continue;
    total += k;
    if (alo < i && blo < j) queue.push_back({alo, i, blo, j});
    if (i + k < ahi && j + k < bhi) queue.push_back({i + k, ahi, j + k, bhi});
  }
  return total;
}

double sequence_ratio(const std::string& a, const std::string& b) {
  auto ca = code_points(a), cb = code_points(b);
  const size_t len = ca.size() + cb.size();
  return len == 0 ? 1.0 : 2.0 * static_cast<double>(sequence_matches(ca, cb)) / static_cast<double>(len);
}

int fuzz_ratio(const std::string& a, const std::string& b) {
  if (a == b) return 100;
  if (a.empty() || b.empty()) return 0;
  return static_cast<int>(std::nearbyint(100.0 * sequence_ratio(a, b)));  // default rounding: half to even
}

}  // namespace mha2mla::eval
