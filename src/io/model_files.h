#pragma once
#include <string>

namespace mha2mla::io {

// Copies the tokenizer and generation files that a model folder holds (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, generation_config.json, tokenizer.model, vocab.json, merges.txt) into another
// folder, replacing files of the same name there. Missing ones are skipped.
void copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir);

}  // namespace mha2mla::io
