// Fuzz targets for binary files: safetensors, token shards, datatrove .ds companions, calibration files.
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
#include "io/safetensors.h"
#include "train/data.h"
#include "util/error.h"

namespace mha2mla::fuzz {
namespace fs = std::filesystem;

namespace {

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

const Register r4("safetensors_header", safetensors_header), r5("safetensors_index", safetensors_index),
    r6("token_shard", token_shard), r7("ds_metadata", ds_metadata), r8("calibration", calibration);

}  // namespace

}  // namespace mha2mla::fuzz
