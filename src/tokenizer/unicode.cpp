#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <array>
#include <cstdlib>
#include <memory>

#include "util/error.h"

namespace mha2mla::tok {

namespace {

// Length of the valid sequence starting at p (n bytes available), or 0 when invalid.
size_t valid_seq_len(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  auto cont = [&](size_t k) { return k < n && (p[k] & 0xC0) == 0x80; };
  if (c < 0xE0) return cont(1) ? 2 : 0;
  if (c < 0xF0) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;   // overlong
    if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c < 0xF5) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;   // overlong
    if (c == 0xF4 && p[1] >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

// Length of the maximal subpart of an ill-formed sequence (WHATWG decoder semantics), >= 1.
size_t maximal_subpart(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c < 0xE0) need = 1;
  else if (c >= 0xE0 && c < 0xF0) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c < 0xF5) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t k = 1;
  for (; k <= need && k < n; ++k) {
    unsigned char b = p[k];
    if (b < lo || b > hi) break;
    lo = 0x80;
    hi = 0xBF;
  }
  return k;
}

struct ByteTables {
  std::array<uint32_t, 256> b2c{};
  std::array<int16_t, 512> c2b{};
  ByteTables() {
    c2b.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      b2c[b] = cp;
      c2b[cp] = int16_t(b);
    }
  }
};

const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) { ++i; continue; }
    size_t l = valid_seq_len(p + i, n - i);
    if (l == 0) return i;
    i += l;
  }
  return std::string_view::npos;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  std::string out;
  out.reserve(n);
  while (i < n) {
    size_t l = valid_seq_len(p + i, n - i);
    if (l) {
      out.append(bytes.data() + i, l);
      i += l;
    } else {
      out += "\xEF\xBF\xBD";
      i += maximal_subpart(p + i, n - i);
    }
  }
  return out;
}

bool is_js_space(uint32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0xA0: case 0x1680:
    case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000: case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string_view js_trim_start(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_js_space(next_cp(s, j))) break;
    i = j;
  }
  return s.substr(i);
}

std::string_view js_trim_end(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t j = start;
    if (!is_js_space(next_cp(s, j))) break;
    end = start;
  }
  return s.substr(0, end);
}

std::string unicode_normalize(std::string_view s, const std::string& form) {
  // Code points below U+0300 are NFC/NFD-stable and never compose (lead bytes < 0xCC): skip the
  // library call for such text, which is most text in practice.
  bool compat = form == "NFKC" || form == "NFKD";
  if (!compat) {
    bool trivial = true;
    for (unsigned char c : s) {
      if (c >= 0xCC) { trivial = false; break; }
    }
    if (trivial && (form == "NFC" || s.find_first_of("\xC3\xC4\xC5\xC6\xC7\xC8\xC9\xCA\xCB") == std::string_view::npos)) {
      return std::string(s);
    }
  } else {
    bool ascii = true;
    for (unsigned char c : s) {
      if (c >= 0x80) { ascii = false; break; }
    }
    if (ascii) return std::string(s);
  }
  int opts = UTF8PROC_STABLE;
  if (form == "NFC") opts |= UTF8PROC_COMPOSE;
  else if (form == "NFD") opts |= UTF8PROC_DECOMPOSE;
  else if (form == "NFKC") opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  else if (form == "NFKD") opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  else fail("unknown Unicode normalization form: " + form);
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(opts));
  if (n < 0) fail(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
  std::unique_ptr<utf8proc_uint8_t, void (*)(void*)> guard(out, std::free);
  return std::string(reinterpret_cast<const char*>(out), size_t(n));
}

uint32_t byte_to_cp(uint8_t b) { return byte_tables().b2c[b]; }

int cp_to_byte(uint32_t cp) { return cp < 512 ? byte_tables().c2b[cp] : -1; }

}  // namespace mha2mla::tok
