#pragma once
// Deterministic tokenizer test corpus: seed lines from tests/tokenizer/data/seed.txt plus
// programmatic mutations (whitespace, case, NFD, joins, special-token insertions, numbers,
// random Unicode soup). Shared by the conformance test and the tokenizer benchmark.
#include <utf8proc.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mha2mla::corpus {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return size_t(next() % n); }
  template <class T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

inline void put_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Byte offsets of code point starts (plus the end).
inline std::vector<size_t> cp_bounds(const std::string& s) {
  std::vector<size_t> b;
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) b.push_back(i);
  b.push_back(s.size());
  return b;
}

inline std::string nfd(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &out,
                        utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE));
  if (n < 0) return s;
  std::string r(reinterpret_cast<char*>(out), size_t(n));
  std::free(out);
  return r;
}

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

inline std::vector<std::string> read_seed(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open corpus seed " + path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(f, line)) lines.push_back(line);
  return lines;
}

inline std::vector<std::string> build(const std::string& seed_path) {
  const std::vector<std::string> seed = read_seed(seed_path);
  std::vector<std::string> out;
  Rng rng(20240531);

  // Hand-picked edge cases.
  for (const char* s : {"", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "a", "A", "'s", "'S", "'", "''",
                        "x's", "X'S", "it'S", "ſ", "'ſ", "K", "ß", "İ", "ﬁ", "\xC2\x85", "a\xC2\x85" "b",
                        "a\xE2\x80\xA8" "b", "a\xE2\x80\xA9" "b", "a\v\fb", "a\rb", "\xEF\xBB\xBF" "bom", "a\xC2\xA0" "b",
                        "\xE3\x80\x80", "0", "00", "000", "0000", "1234567890", "  1  ", "<s>", "</s>", "<unk>",
                        "<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<think>", "<s><s>", " <s>", "<s> ",
                        "a<s>b", "\n<s>\n", "\xE2\x96\x81", "\xE2\x96\x81\xE2\x96\x81x", "<0x41>", "\x7F", "\x01\x02"})
    out.emplace_back(s);

  for (const std::string& line : seed) {
    out.push_back(line);
    std::string d = nfd(line);
    if (d != line) out.push_back(d);
    std::string up = line, low = line;
    for (char& c : up)
      if (c >= 'a' && c <= 'z') c = char(c - 32);
    for (char& c : low)
      if (c >= 'A' && c <= 'Z') c = char(c + 32);
    if (up != line) out.push_back(up);
    if (low != line) out.push_back(low);
    out.push_back("  " + line);
    out.push_back(line + "   ");
    out.push_back(" " + line + "\n");
    out.push_back(replace_all(line, " ", "  "));
    out.push_back(replace_all(line, " ", "\t"));
    out.push_back(replace_all(line, " ", " \n"));
  }

  const std::vector<std::string> seps = {" ", "\n", "\n\n", "\r\n", "\t", "", "  \n  ", " \n\n ", "\n \n", "    "};
  for (int k = 0; k < 700; ++k) {
    size_t parts = 2 + rng.below(3);
    std::string s;
    for (size_t p = 0; p < parts; ++p) {
      if (p) s += rng.pick(seps);
      s += rng.pick(seed);
    }
    out.push_back(s);
  }

  const std::vector<std::string> specials = {"<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
                                             "<|begin_of_text|>", "<|eot_id|>", "<think>", "</think>", " <s> ",
                                             "<|endoftext|>\n", "<tool_call>", "<|fim_prefix|>", "<|end_of_text|>"};
  for (int k = 0; k < 500; ++k) {
    std::string s = rng.pick(seed);
    for (size_t r = 1 + rng.below(3); r > 0; --r) {
      auto b = cp_bounds(s);
      size_t at = b[rng.below(b.size())];
      s.insert(at, rng.pick(specials));
    }
    out.push_back(s);
  }

  const std::vector<std::string> num_seps = {"", "", ",", ".", " ", "-", "_", "e", "/", ":"};
  for (int k = 0; k < 200; ++k) {
    std::string s;
    for (size_t g = 1 + rng.below(4); g > 0; --g) {
      for (size_t n = 1 + rng.below(12); n > 0; --n) s += char('0' + rng.below(10));
      s += rng.pick(num_seps);
    }
    out.push_back(s);
  }

  // Unicode soup: whitespace variants, marks, apostrophes, letters of many scripts, digits, emoji parts.
  const std::vector<uint32_t> soup = {
      ' ', ' ', ' ', '\t', '\n', '\r', 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x2000, 0x2009, 0x200A, 0x2028, 0x2029,
      0x202F, 0x205F, 0x3000, 0xFEFF, 0x200B, 0x200C, 0x200D, 0x2060, '\'', '\'', 's', 'S', 't', 'l', 'L', 'd',
      'r', 'e', 'v', 'm', 0x17F, 0x212A, 'a', 'z', 'Q', '0', '7', '9', 0x660, 0x966, 0xFF11, 0xB2, 0xBD, 0x2167,
      0x301, 0x308, 0x327, 0x20DD, 0xFE0F, 0x1F3FD, 0x1F600, 0x1F1FA, 0x1F1F8, 0x2764, 0xE9, 0xDF, 0x130, 0x3B1,
      0x3C9, 0x436, 0x5D0, 0x627, 0x915, 0x94D, 0xE01, 0x4E2D, 0x6587, 0x3042, 0x30A2, 0xAC00, 0x1100, 0x1161,
      0x11A8, 0x10348, 0x1D400, '.', ',', '!', '?', '-', '_', '(', ')', '<', '>', '|', '/', '\\', '"', '#', '$',
      '%', '&', '*', '+', '=', '@', '^', '`', '~', '{', '}', '[', ']', ':', ';', 0x2014, 0x2026, 0x201C, 0x3002,
      0xFF0C, 0x2581, 0xFFFD, 0x7F, 0x1, 0x1B, 0xE000, 0x10FFFD};
  for (int k = 0; k < 600; ++k) {
    std::string s;
    for (size_t n = 1 + rng.below(40); n > 0; --n) put_utf8(s, rng.pick(soup));
    out.push_back(s);
  }

  // Slices of seed lines at code point boundaries.
  for (int k = 0; k < 300; ++k) {
    const std::string& s = rng.pick(seed);
    auto b = cp_bounds(s);
    size_t i = rng.below(b.size()), j = rng.below(b.size());
    if (i > j) std::swap(i, j);
    out.push_back(s.substr(b[i], b[j] - b[i]));
  }

  // A few long multi-line documents.
  for (int k = 0; k < 20; ++k) {
    std::string s;
    for (size_t n = 20 + rng.below(40); n > 0; --n) {
      s += rng.pick(seed);
      s += rng.below(4) == 0 ? "\n\n" : "\n";
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace mha2mla::corpus
