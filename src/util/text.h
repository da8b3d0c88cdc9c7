#pragma once
#include <cstddef>
#include <cstdint>
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
