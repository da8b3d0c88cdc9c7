#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace mha2mla {

// Length of the longest prefix of s that ends on a complete UTF-8 character and holds no U+FFFD
// at its end (an incomplete byte sequence decoded so far): what is safe to stream now.
size_t stable_utf8_prefix(const std::string& s);

}  // namespace mha2mla

namespace mha2mla {
// "1.50 MiB", "312 B": a byte count for people.
std::string format_bytes(int64_t bytes);
}  // namespace mha2mla

namespace mha2mla {
// "[2, 3, 64]": the sizes of a shape (at::IntArrayRef, std::vector<int64_t>, ...) for messages.
template <class Sizes>
std::string shape_str(const Sizes& sizes) {
  std::string out = "[";
  bool first = true;
  for (auto n : sizes) {
    out += (first ? "" : ", ") + std::to_string(n);
    first = false;
  }
  return out + "]";
}
inline std::string shape_str(std::initializer_list<int64_t> sizes) {
  return shape_str<std::initializer_list<int64_t>>(sizes);
}
}  // namespace mha2mla
