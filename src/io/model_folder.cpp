#include "io/model_folder.h"

#include <filesystem>
#include <system_error>

#include "util/error.h"

namespace mha2mla::io {

void check_model_folder(const std::string& dir, unsigned parts) {
  namespace fs = std::filesystem;
  std::error_code ec;
  check(fs::exists(dir, ec), "model folder not found: " + dir);
  check(fs::is_directory(dir, ec),
        dir + " is not a folder: a model is a folder with config.json, its safetensors and tokenizer.json");
  auto has = [&](const char* name) { return fs::is_regular_file(fs::path(dir) / name, ec); };
  if (parts & kModelConfig) check(has("config.json"), "model folder " + dir + " has no config.json");
  if (parts & kModelWeights)
    check(has("model.safetensors") || has("model.safetensors.index.json"),
          "model folder " + dir + " has no weights (model.safetensors or model.safetensors.index.json)");
  if (parts & kModelTokenizer) check(has("tokenizer.json"), "model folder " + dir + " has no tokenizer.json");
}

}  // namespace mha2mla::io
