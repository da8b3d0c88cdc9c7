#pragma once
// Python's difflib.SequenceMatcher(None, a, b).ratio() over code points, and fuzzywuzzy's fuzz.ratio built on it
// (fuzzywuzzy without python-Levenshtein, as LongBench installs it). LongBench scores code completion with these.
#include <cstdint>
#include <string>
#include <vector>

namespace mha2mla::eval {

// Code points of UTF-8 text (invalid bytes become U+FFFD), as a Python str sees them.
std::vector<uint32_t> code_points(const std::string& utf8);

// Sum of the sizes of difflib's matching blocks (longest match first, then recursively left and right),
// with difflib's autojunk rule: when b has >= 200 items, items occurring more than len(b)/100 + 1 times are
// "popular" and cannot seed a match (they may still extend one).
int64_t sequence_matches(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b);

// 2 * matches / (len(a) + len(b)); 1.0 when both are empty (difflib's convention).
double sequence_ratio(const std::string& a, const std::string& b);

// fuzz.ratio(a, b): 100 when a == b (even both empty), 0 when either is empty, else
// round(100 * sequence_ratio) with Python's round-half-to-even. An integer in 0..100.
int fuzz_ratio(const std::string& a, const std::string& b);

}  // namespace mha2mla::eval
