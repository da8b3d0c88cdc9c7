#pragma once
#include <string>

namespace mha2mla {

// Length of the longest prefix of s that ends on a complete UTF-8 character and holds no U+FFFD
// at its end (an incomplete byte sequence decoded so far): what is safe to stream now.
size_t stable_utf8_prefix(const std::string& s);

}  // namespace mha2mla
