// mha2mla tokenize --tokenizer PATH [--add-special]: stdin lines -> JSON id arrays on stdout.
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/cli.h"
#include "cli/options.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace mha2mla::cli {

int cmd_tokenize(const Args& a) {
  std::string path;
  bool add_special = false;
  OptionTable t("tokenize", "--tokenizer PATH [--add-special]",
                "Reads UTF-8 text from stdin and prints the token ids of each line as a JSON array.");
  t.required("tokenizer", "PATH", "tokenizer.json, or a model folder holding one", [&](auto& v) { path = v; })
      .toggle("add-special", "apply the post-processor template (e.g. BOS), like HF add_special_tokens=True",
              add_special);
  if (!t.parse(a)) return 0;
  const tok::Tokenizer tokenizer = tok::Tokenizer::load(path);

  std::ios::sync_with_stdio(false);
  std::string line, out;
  size_t line_no = 0;
  // The line is kept exactly as read (a trailing '\r' included); only the '\n' separator is dropped.
  while (std::getline(std::cin, line)) {
    ++line_no;
    std::vector<int32_t> ids;
    try {
      ids = tokenizer.encode(line, add_special);
    } catch (const Error& e) {
      fail("line " + std::to_string(line_no) + ": " + e.what());
    }
    out.clear();
    out += '[';
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ',';
      out += std::to_string(ids[i]);
    }
    out += "]\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  if (std::cin.bad()) fail("error reading stdin");
  std::fflush(stdout);
  return 0;
}

}  // namespace mha2mla::cli
