#pragma once
// The one check of a --model folder, so that every command reports a wrong path the same way: the folder
// named, and what is missing in it.
#include <string>

namespace mha2mla::io {

enum ModelFolderParts : unsigned {
  kModelConfig = 1,     // config.json
  kModelWeights = 2,    // model.safetensors or model.safetensors.index.json
  kModelTokenizer = 4,  // tokenizer.json
  kModelAll = kModelConfig | kModelWeights | kModelTokenizer,
};

// Throws mha2mla::Error when `dir` does not exist, is not a folder, or lacks one of `parts`.
void check_model_folder(const std::string& dir, unsigned parts);

}  // namespace mha2mla::io
