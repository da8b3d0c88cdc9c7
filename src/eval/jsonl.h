#pragma once
// JSON Lines input: one JSON value per non-blank line, errors naming the file and line.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mha2mla::eval {

struct JsonlRow {
  int64_t line = 0;  // 1-based
  nlohmann::json value;
};

// At most `limit` rows (0 = all). Throws Error "FILE:LINE: ..." on unreadable files and invalid JSON.
std::vector<JsonlRow> read_jsonl(const std::string& path, int64_t limit = 0);

// Runs fn on the row; an Error it throws is rethrown as "FILE:LINE: message".
template <typename T>
T at_row(const std::string& path, const JsonlRow& row, const std::function<T(const nlohmann::json&)>& fn);

}  // namespace mha2mla::eval

#include "util/error.h"

template <typename T>
T mha2mla::eval::at_row(const std::string& path, const JsonlRow& row, const std::function<T(const nlohmann::json&)>& fn) {
  try {
    return fn(row.value);
  } catch (const Error& e) {
    fail(path + ":" + std::to_string(row.line) + ": " + e.what());
  }
}
