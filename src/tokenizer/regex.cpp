#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cstring>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace mha2mla::tok {

namespace {

constexpr const char* kWordChars = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexChars = "0-9A-Fa-f";

bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
char other_case(char c) { return (c >= 'a' && c <= 'z') ? char(c - 32) : char(c + 32); }

// Per-thread match state: match data sized for a few groups and a JIT stack large enough for
// long whitespace or letter runs (the 32 KiB default can overflow on pathological lines).
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchState() {
    md = pcre2_match_data_create(32, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (mc && js) pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(js);
  }
};

MatchState& match_state() {
  thread_local MatchState st;
  return st;
}

}  // namespace

std::string translate_oniguruma(const std::string& p) {
  std::string out;
  out.reserve(p.size() * 2);
  std::vector<bool> fold_stack{false};  // case-insensitivity per open group
  bool in_class = false;
  size_t class_start = 0;
  size_t i = 0, n = p.size();
  auto copy_escape_arg = [&](size_t& k) {
    // Copies "{...}" after \p, \P, \x when present.
    if (k < n && p[k] == '{') {
      size_t close = p.find('}', k);
      if (close == std::string::npos) close = n - 1;
      out.append(p, k, close - k + 1);
      k = close + 1;
    }
  };
  while (i < n) {
    char c = p[i];
    bool fold = fold_stack.back();
    if (c == '\\' && i + 1 < n) {
      char e = p[i + 1];
      size_t k = i + 2;
      switch (e) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'w': out += in_class ? std::string(kWordChars) : "[" + std::string(kWordChars) + "]"; break;
        case 'W': out += in_class ? std::string("\\W") : "[^" + std::string(kWordChars) + "]"; break;
        case 'h': out += in_class ? std::string(kHexChars) : "[" + std::string(kHexChars) + "]"; break;
        case 'H': out += in_class ? std::string("\\H") : "[^" + std::string(kHexChars) + "]"; break;
        case 'd': out += "\\p{Nd}"; break;
        case 'D': out += "\\P{Nd}"; break;
        case 'p': case 'P': case 'x':
          out += '\\';
          out += e;
          copy_escape_arg(k);
          break;
        case 'u':
          // Oniguruma \uHHHH -> PCRE2 \x{HHHH}
          if (k + 4 <= n) {
            out += "\\x{" + p.substr(k, 4) + "}";
            k += 4;
          } else {
            out += "\\u";
          }
          break;
        default:
          out += '\\';
          out += e;
          if (static_cast<unsigned char>(e) >= 0x80) {
            // Keep a multi-byte escaped character whole.
            size_t l = cp_len(static_cast<unsigned char>(e));
            out.append(p, k, l - 1);
            k += l - 1;
          }
          break;
      }
      i = k;
      continue;
    }
    if (in_class) {
      if (c == ']' && i > class_start) {
        in_class = false;
        out += c;
        ++i;
        continue;
      }
      if (fold && is_ascii_letter(c)) {
        if (i + 2 < n && p[i + 1] == '-' && p[i + 2] != ']' && is_ascii_letter(p[i + 2])) {
          char lo = c, hi = p[i + 2];
          out += lo;
          out += '-';
          out += hi;
          if ((lo >= 'a') == (hi >= 'a')) {
            out += other_case(lo);
            out += '-';
            out += other_case(hi);
          }
          i += 3;
          continue;
        }
        out += c;
        out += other_case(c);
        ++i;
        continue;
      }
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < n && p[i] == '^') { out += '^'; ++i; }
      class_start = i;  // a ']' right here is a literal
      continue;
    }
    if (c == '(') {
      if (i + 1 < n && p[i + 1] == '?') {
        // Inline option groups: (?i: ...), (?-i: ...), (?i) ...
        size_t k = i + 2;
        bool on = true, seen_i = false, neg = false;
        while (k < n && (p[k] == 'i' || p[k] == 'm' || p[k] == 'x' || p[k] == '-')) {
          if (p[k] == '-') neg = true;
          if (p[k] == 'i') { seen_i = true; on = !neg; }
          ++k;
        }
        if (k < n && (p[k] == ':' || p[k] == ')') && k > i + 2) {
          bool new_fold = seen_i ? on : fold;
          if (p[k] == ':') {
            fold_stack.push_back(new_fold);
            out += "(?:";
          } else {
            fold_stack.back() = new_fold;  // applies to the rest of the enclosing group
          }
          i = k + 1;
          continue;
        }
        // Other group kinds: copy the header verbatim ("(?:", "(?=", "(?<name>", ...).
        size_t hdr = i + 2;
        if (hdr < n && (p[hdr] == '<' || p[hdr] == 'P') && hdr + 1 < n && p[hdr + 1] != '=' && p[hdr + 1] != '!') {
          size_t close = p.find('>', hdr);
          if (close != std::string::npos) hdr = close;
        }
        out.append(p, i, hdr - i + 1);
        fold_stack.push_back(fold);
        i = hdr + 1;
        continue;
      }
      fold_stack.push_back(fold);
      out += c;
      ++i;
      continue;
    }
    if (c == ')') {
      if (fold_stack.size() > 1) fold_stack.pop_back();
      out += c;
      ++i;
      continue;
    }
    if (fold && is_ascii_letter(c)) {
      out += '[';
      out += c;
      out += other_case(c);
      out += ']';
      ++i;
      continue;
    }
    if (c == '{') {
      // Quantifier braces contain no letters; copy through.
      size_t close = p.find('}', i);
      if (close != std::string::npos) {
        out.append(p, i, close - i + 1);
        i = close + 1;
        continue;
      }
    }
    out += c;
    ++i;
  }
  return out;
}

Regex::Regex(const std::string& pattern, bool literal) {
  if (literal) {
    if (pattern.empty()) fail("tokenizer.json: empty String pattern");
    literal_ = pattern;
    return;
  }
  std::string src = translate_oniguruma(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | PCRE2_MULTILINE;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(src.data()), src.size(), opts, &err, &off, cc);
  pcre2_compile_context_free(cc);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    fail("tokenizer regex does not compile at offset " + std::to_string(off) + " (" +
         reinterpret_cast<const char*>(buf) + "): " + pattern);
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::Regex(Regex&& o) noexcept : code_(o.code_), jit_(o.jit_), literal_(std::move(o.literal_)) { o.code_ = nullptr; }

Regex::~Regex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

bool Regex::find(std::string_view text, size_t start, std::pair<size_t, size_t>& m) const {
  if (!code_) {
    size_t at = text.find(literal_, start);
    if (at == std::string_view::npos) return false;
    m = {at, at + literal_.size()};
    return true;
  }
  auto& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = jit_ ? pcre2_jit_match(code, subject, text.size(), start, 0, st.md, st.mc)
                : pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, st.md, st.mc);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(rc, buf, sizeof buf);
    fail(std::string("tokenizer regex match failed: ") + reinterpret_cast<const char*>(buf));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  m = {ov[0], ov[1]};
  return true;
}

std::string Regex::replace_all(std::string_view text, std::string_view replacement) const {
  std::string out;
  out.reserve(text.size());
  size_t last = 0;
  for_each_match(text, [&](size_t b, size_t e) {
    out.append(text.data() + last, b - last);
    out.append(replacement);
    last = e;
  });
  out.append(text.data() + last, text.size() - last);
  return out;
}

}  // namespace mha2mla::tok
