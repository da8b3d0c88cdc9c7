#pragma once
// PCRE2 (UTF + UCP + JIT) wrapper for the tokenizer's Oniguruma-flavoured patterns.
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mha2mla::tok {

class Regex {
 public:
  // `pattern` uses Hugging Face (Oniguruma) syntax; see translate_oniguruma().
  explicit Regex(const std::string& pattern, bool literal = false);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) = delete;
  Regex(const Regex&) = delete;
  ~Regex();

  // Calls f(begin, end) for every non-overlapping match, left to right. Text must be valid UTF-8.
  // Empty matches are reported and the scan advances by one code point after them.
  template <class F>
  void for_each_match(std::string_view text, F&& f) const {
    size_t pos = 0;
    std::pair<size_t, size_t> m;
    while (pos <= text.size() && find(text, pos, m)) {
      f(m.first, m.second);
      if (m.second > m.first) {
        pos = m.second;
      } else {
        if (m.second >= text.size()) break;
        pos = m.second + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
  }

  std::string replace_all(std::string_view text, std::string_view replacement) const;

  bool find(std::string_view text, size_t start, std::pair<size_t, size_t>& match) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*; null for literal patterns
  bool jit_ = false;
  std::string literal_;  // String patterns are matched with a plain substring search
};

// Rewrites Oniguruma syntax where PCRE2 differs: \s/\S as Unicode White_Space, \w/\W as Oniguruma's
// word set, \h/\H as hex digits, ASCII-only case folding inside (?i: ... ) groups.
std::string translate_oniguruma(const std::string& pattern);

}  // namespace mha2mla::tok
