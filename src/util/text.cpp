#include "util/text.h"

#include <cstdio>


namespace mha2mla {

size_t stable_utf8_prefix(const std::string& s) {
  size_t n = s.size();
  // Back off over a trailing incomplete multi-byte sequence.
  size_t i = n;
  int back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++back;
  }
  if (i > 0) {
    unsigned char lead = static_cast<unsigned char>(s[i - 1]);
    int need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (need > 1 && back + 1 < need) n = i - 1;
  }
  static const std::string repl = "\xEF\xBF\xBD";
  while (n >= 3 && s.compare(n - 3, 3, repl) == 0) n -= 3;
  return n;
}

}  // namespace mha2mla

namespace mha2mla {

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

}  // namespace mha2mla
