#include "util/json_read.h"

#include "util/atomic_file.h"
#include "util/error.h"

namespace mha2mla {

int json_depth(std::string_view text, size_t* first_deep) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) max_depth = depth;
      if (depth > kMaxJsonDepth) {
        if (first_deep) *first_deep = i;
        return kMaxJsonDepth + 1;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

nlohmann::json parse_json(std::string_view text, const std::string& source,
                          const nlohmann::json::parser_callback_t& cb) {
  size_t at = 0;
  if (json_depth(text, &at) > kMaxJsonDepth)
    fail(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels (at byte " +
         std::to_string(at) + ")");
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::exception& e) {
    fail(source + ": malformed JSON (" + e.what() + ")");
  }
}

std::string json_brief(const nlohmann::json& j, size_t max_chars) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

nlohmann::json read_json_file(const std::string& path) { return parse_json(read_text_file(path), path); }

}  // namespace mha2mla
