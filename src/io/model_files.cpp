#include "io/model_files.h"

#include <filesystem>

namespace mha2mla::io {

void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir) {
  namespace fs = std::filesystem;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                        "tokenizer.model", "vocab.json", "merges.txt"}) {
    const fs::path src = fs::path(from_dir) / f;
    if (fs::exists(src)) fs::copy_file(src, fs::path(to_dir) / f, fs::copy_options::overwrite_existing);
  }
}

}  // namespace mha2mla::io
