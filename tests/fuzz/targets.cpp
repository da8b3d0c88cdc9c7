#include "fuzz/targets.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>

#include "convert/calibrate.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"
#include "util/error.h"
#include "util/json_read.h"

namespace mha2mla::fuzz {
namespace fs = std::filesystem;

namespace {

// A scratch folder per process, in memory where available.
const std::string& scratch() {
  static const std::string dir = [] {
    fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("mha2mla-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d.string();
  }();
  return dir;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

std::string_view text(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

// Reads every byte a tensor view maps, so an out-of-bounds view is caught by the sanitizer.
void touch(const torch::Tensor& t) {
  if (t.numel() == 0) return;
  auto c = t.contiguous();
  const auto* p = static_cast<const volatile uint8_t*>(c.data_ptr());
  uint8_t acc = 0;
  for (size_t i = 0, n = c.nbytes(); i < n; ++i) acc ^= p[i];
  (void)acc;
}

void safetensors_header(const uint8_t* data, size_t size) {
  const std::string path = scratch() + "/header.safetensors";
  write_bytes(path, data, size);
  io::SafetensorsFile f(path);
  for (const auto& t : f.tensors()) touch(f.tensor(t.name));
  for (const auto& [k, v] : f.metadata()) (void)k, (void)v;
}

void safetensors_index(const uint8_t* data, size_t size) {
  const std::string dir = scratch() + "/index";
  static const bool ready = [&] {
    fs::create_directories(dir);
    io::save_safetensors(dir + "/model-00001-of-00002.safetensors",
                         {{"a", torch::arange(6, torch::kFloat32).view({2, 3})}, {"b", torch::ones({4}, torch::kBFloat16)}});
    io::save_safetensors(dir + "/model-00002-of-00002.safetensors", {{"c", torch::zeros({3}, torch::kInt64)}});
    return true;
  }();
  (void)ready;
  write_bytes(dir + "/model.safetensors.index.json", data, size);
  auto ck = io::Checkpoint::open(dir);
  for (const auto& n : ck.names()) touch(ck.get(n));
}

void config_json(const uint8_t* data, size_t size) {
  auto j = parse_json(text(data, size), "config.json");
  auto c = io::ModelConfig::from_json(j, "config.json");
  // What loads must also survive its own rewrite unchanged.
  auto again = io::ModelConfig::from_json(c.to_json(), "rewritten config.json");
  if (again.to_json() != c.to_json()) std::abort();
}

void tokenizer_json(const uint8_t* data, size_t size) {
  auto tok = tok::Tokenizer::from_json_text(text(data, size), "tokenizer.json");
  for (const char* s : {"Hello world", " 12 345 \n\n  ünïcödé 日本語 <|endoftext|> 🙂", ""}) {
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
  // Byte-level BPE without a normalizer is lossless on valid UTF-8.
  if (size % 2 == 1 && back != text(data, size)) std::abort();
}

void token_shard(const uint8_t* data, size_t size) {
  const std::string path = scratch() + "/shard.bin";
  write_bytes(path, data, size);
  auto s = train::TokenShard::open(path);
  std::vector<int64_t> buf(static_cast<size_t>(std::min<int64_t>(s.size(), 4096)));
  if (!buf.empty()) s.read(0, int64_t(buf.size()), buf.data());
  (void)s.max_token();
}

// Byte 0 picks the companion (.metadata or .index) and the token size hint, byte 1 the .ds size;
// the rest is the companion file.
void ds_metadata(const uint8_t* data, size_t size) {
  if (size < 2) return;
  const std::string ds = scratch() + "/tokens.ds";
  std::vector<uint8_t> tokens(data[1], 0x5a);
  write_bytes(ds, tokens.data(), tokens.size());
  std::error_code ec;
  fs::remove(ds + ".metadata", ec);
  fs::remove(ds + ".index", ec);
  write_bytes(ds + ((data[0] & 1) ? ".index" : ".metadata"), data + 2, size - 2);
  const int hint = (data[0] >> 1) % 3 == 0 ? 0 : (data[0] >> 1) % 3 == 1 ? 2 : 4;
  auto s = train::TokenShard::open(ds, hint);
  if (s.size() > 0) (void)s.max_token();
}

void calibration(const uint8_t* data, size_t size) {
  const std::string path = scratch() + "/calib.safetensors";
  write_bytes(path, data, size);
  auto c = convert::load_calib(path);
  (void)c;
}

}  // namespace

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"safetensors_header", safetensors_header}, {"safetensors_index", safetensors_index},
      {"config_json", config_json},               {"tokenizer_json", tokenizer_json},
      {"tokenizer_encode", tokenizer_encode},     {"token_shard", token_shard},
      {"ds_metadata", ds_metadata},               {"calibration", calibration},
  };
  return all;
}

const Target* find_target(const std::string& name) {
  for (const auto& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

bool run_one(const Target& t, const uint8_t* data, size_t size) {
  try {
    t.run(data, size);
    return true;
  } catch (const Error&) {
    return false;  // a clean, named rejection
  }
}

}  // namespace mha2mla::fuzz
