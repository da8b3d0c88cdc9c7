// Fuzz targets for JSON files and text: config.json (with the mha2mla section), tokenizer.json, and
// arbitrary bytes through a real tokenizer. No libtorch needed.
#include <cstdlib>
#include <memory>
#include <string_view>

#include "fuzz/targets.h"
#include "io/config.h"
#include "tokenizer/tokenizer.h"
#include "util/json_read.h"

namespace mha2mla::fuzz {
namespace {

std::string_view text(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

void config_json(const uint8_t* data, size_t size) {
  auto j = parse_json(text(data, size), "config.json");
  auto c = io::ModelConfig::from_json(j, "config.json");
  // What loads must also survive its own rewrite unchanged.
  auto again = io::ModelConfig::from_json(c.to_json(), "rewritten config.json");
  if (again.to_json() != c.to_json()) std::abort();
}

void tokenizer_json(const uint8_t* data, size_t size) {
  auto tok = tok::Tokenizer::from_json_text(text(data, size), "tokenizer.json");
  for (const char* s : {"Hello world", " 12 345 \n\n  ünïcödé 日本 <|endoftext|> 🙂", ""}) {
    auto ids = tok.encode(s, true);
    tok.decode(ids, false);
    tok.decode(ids, true);
  }
  tok.decode({0, 1, 2, -1, 1 << 30}, false);
}

// Arbitrary bytes through a real trained tokenizer (the default model's), encode then decode.
void tokenizer_encode(const uint8_t* data, size_t size) {
  static const std::unique_ptr<tok::Tokenizer> tok = [] {
    return std::make_unique<tok::Tokenizer>(tok::Tokenizer::load(MHA2MLA_SOURCE_DIR "/models/kjv-gqa/tokenizer.json"));
  }();
  auto ids = tok->encode(text(data, size), size % 2 == 0);
  const std::string back = tok->decode(ids, false);
  // Byte-level BPE without a normalizer is lossless on valid UTF-8 (odd sizes: no special tokens added).
  if (size % 2 == 1 && back != text(data, size)) std::abort();
}

const Register r1("config_json", config_json), r2("tokenizer_json", tokenizer_json),
    r3("tokenizer_encode", tokenizer_encode);

}  // namespace
}  // namespace mha2mla::fuzz
