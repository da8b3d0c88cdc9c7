#include "eval/jsonl.h"

#include <sstream>

#include "util/atomic_file.h"

namespace mha2mla::eval {

std::vector<JsonlRow> read_jsonl(const std::string& path, int64_t limit) {
  std::istringstream in(read_text_file(path));
  std::vector<JsonlRow> rows;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    JsonlRow r;
    r.line = n;
    try {
      r.value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail(path + ":" + std::to_string(n) + ": not valid JSON");
    }
    rows.push_back(std::move(r));
    if (limit > 0 && static_cast<int64_t>(rows.size()) >= limit) break;
  }
  check(!rows.empty(), path + ": no rows");
  return rows;
}

}  // namespace mha2mla::eval
