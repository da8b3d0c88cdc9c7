#pragma once
// JSON from files made elsewhere: nesting depth is bounded before parsing, so hostile input cannot
// exhaust the stack in code that walks or prints the parsed value recursively.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace mha2mla {

// Deeper than any real config, tokenizer, index or header (they nest at most ~6 levels).
constexpr int kMaxJsonDepth = 64;

// Greatest nesting of [ and { outside strings, or kMaxJsonDepth + 1 as soon as it is exceeded;
// first_deep receives the byte offset where that happened.
int json_depth(std::string_view text, size_t* first_deep = nullptr);

// Parses text; throws mha2mla::Error "SOURCE: ..." on malformed JSON or nesting deeper than kMaxJsonDepth.
// cb, when given, is nlohmann's parser callback (e.g. to see duplicate keys).
nlohmann::json parse_json(std::string_view text, const std::string& source,
                          const nlohmann::json::parser_callback_t& cb = nullptr);

// A value for an error message: compact, invalid UTF-8 replaced, cut to max_chars with "...".
std::string json_brief(const nlohmann::json& j, size_t max_chars = 60);

// read_text_file + parse_json.
nlohmann::json read_json_file(const std::string& path);

}  // namespace mha2mla
