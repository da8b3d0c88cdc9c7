#pragma once
// UTF-8 helpers shared by the tokenizer stages.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mha2mla::tok {

// Offset of the first byte that starts an invalid sequence (overlong, surrogate, > U+10FFFF,
// truncated), or npos when the whole text is valid.
size_t find_invalid_utf8(std::string_view s);

// Decodes the code point at s[i] (valid UTF-8 assumed) and advances i.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  unsigned char c = p[0];
  if (c < 0x80) { i += 1; return c; }
  if (c < 0xE0) { i += 2; return ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu); }
  if (c < 0xF0) { i += 3; return ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu); }
  i += 4;
  return ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

inline size_t cp_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, uint32_t cp);

// Like Rust's String::from_utf8_lossy / WHATWG TextDecoder: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// ECMAScript String.prototype.trim whitespace (WhiteSpace + LineTerminator), used for lstrip/rstrip.
bool is_js_space(uint32_t cp);
std::string_view js_trim_start(std::string_view s);
std::string_view js_trim_end(std::string_view s);

// Unicode normalization via utf8proc; form is "NFC", "NFD", "NFKC" or "NFKD".
std::string unicode_normalize(std::string_view s, const std::string& form);

// GPT-2 byte <-> printable code point table used by ByteLevel pre-tokenizer and decoder.
uint32_t byte_to_cp(uint8_t b);
int cp_to_byte(uint32_t cp);  // -1 when cp is not in the table

}  // namespace mha2mla::tok
