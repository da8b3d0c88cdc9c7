// Streamed checkpoint writing (shards as HF names them, re-read identically to save_checkpoint), page release,
// and zero-copy loading: a parameter stored in the compute dtype lives inside the file's mapping, as
// /proc/self/maps reports it, and writing to it never reaches the file.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"
#include "util/error.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

io::NamedTensors sample_tensors() {
  auto gen = at::detail::createCPUGenerator(3);
  io::NamedTensors t;
  t.push_back({"a.weight", at::normal(0.0, 1.0, {64, 32}, gen, torch::TensorOptions())});           // 8 KiB
  t.push_back({"b.weight", at::normal(0.0, 1.0, {33, 7}, gen, torch::TensorOptions()).to(torch::kBFloat16)});
  t.push_back({"c.bias", at::normal(0.0, 1.0, {5}, gen, torch::TensorOptions()).to(torch::kFloat16)});
  t.push_back({"d.big", at::normal(0.0, 1.0, {128, 64}, gen, torch::TensorOptions())});  // 32 KiB: over the limit
  t.push_back({"e.ids", torch::arange(11, torch::kInt64)});
  t.push_back({"f.empty", torch::zeros({0, 4})});
  return t;
}

void expect_same_tensors(const io::Checkpoint& ck, const io::NamedTensors& want) {
  EXPECT_EQ(ck.names().size(), want.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(ck.has(name)) << name;
    auto got = ck.get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(got, t)) << name;
  }
}

// [begin, end) of every private mapping of `path` in this process.
std::vector<std::pair<uintptr_t, uintptr_t>> private_mappings_of(const std::string& path) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  const std::string want = fs::canonical(path).string();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream ss(line);
    std::string range, perms, off, dev, inode, file;
    ss >> range >> perms >> off >> dev >> inode >> file;
    if (file != want || perms.size() < 4 || perms[3] != 'p') continue;
    const auto dash = range.find('-');
    out.push_back({std::stoull(range.substr(0, dash), nullptr, 16), std::stoull(range.substr(dash + 1), nullptr, 16)});
  }
  return out;
}

bool inside(const std::vector<std::pair<uintptr_t, uintptr_t>>& maps, const torch::Tensor& t) {
  const auto b = reinterpret_cast<uintptr_t>(t.data_ptr());
  const auto e = b + static_cast<uintptr_t>(t.numel() * t.element_size());
  for (const auto& [mb, me] : maps)
    if (b >= mb && e <= me) return true;
  return false;
}

TEST(CheckpointWriter, ShardsAsHfAndReadsBackAsSaveCheckpoint) {
  auto dir = testutil::temp_dir("ckwriter");
  auto tensors = sample_tensors();
  // The in-memory writer and the streamed one, same limit.
  io::save_checkpoint(dir + "/mem", tensors, 10 * 1024);
  {
    io::CheckpointWriter w(dir + "/stream", 10 * 1024);
    for (const auto& [n, t] : tensors) w.add(n, t);
    w.finish();
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir + "/stream")) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  // a, b, c (8664 bytes; d would overflow 10 KiB) | d alone (32 KiB, over the limit) | e, f
  std::vector<std::string> want{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
  EXPECT_EQ(files, want);
  auto index = nlohmann::json::parse(testutil::slurp(dir + "/stream/model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"]["c.bias"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["d.big"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["e.ids"], "model-00003-of-00003.safetensors");
  uint64_t total = 0;
  for (const auto& kv : tensors) total += kv.second.numel() * kv.second.element_size();
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);

  auto mem = io::Checkpoint::open(dir + "/mem"), stream = io::Checkpoint::open(dir + "/stream");
  expect_same_tensors(stream, tensors);
  expect_same_tensors(mem, tensors);
  EXPECT_EQ(mem.names(), stream.names());
  // Metadata as transformers wants it.
  io::SafetensorsFile first(dir + "/stream/model-00001-of-00003.safetensors");
  EXPECT_EQ(first.metadata().at("format"), "pt");

  // No limit: one model.safetensors, no index.
  {
    io::CheckpointWriter w(dir + "/one", 0);
    for (const auto& [n, t] : tensors) w.add(n, t);
    w.finish();
  }
  EXPECT_TRUE(fs::exists(dir + "/one/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/one/model.safetensors.index.json"));
  expect_same_tensors(io::Checkpoint::open(dir + "/one"), tensors);
  fs::remove_all(dir);
}

TEST(CheckpointWriter, HeaderLargerThanTheReserveMovesTheData) {
  auto dir = testutil::temp_dir("ckwriter-big-header");
  io::NamedTensors many;
  // ~1500 entries of ~110 header bytes each: well over the 64 KiB left for the header.
  for (int i = 0; i < 1500; ++i)
    many.push_back({"model.layers." + std::to_string(i) + ".a_rather_long_module_name.another_level.weight",
                    torch::full({3}, static_cast<float>(i))});
  {
    io::CheckpointWriter w(dir + "/out", 0);
    for (const auto& [n, t] : many) w.add(n, t);
    w.finish();
  }
  expect_same_tensors(io::Checkpoint::open(dir + "/out"), many);
  fs::remove_all(dir);
}

TEST(CheckpointWriter, UnfinishedLeavesNothingAndRefusesBadInput) {
  auto dir = testutil::temp_dir("ckwriter-abort");
  {
    io::CheckpointWriter w(dir + "/out", 1024);
    w.add("x", torch::zeros({512}));
    w.add("y", torch::zeros({512}));  // closes the first shard
    testutil::expect_error([&] { w.add("x", torch::zeros({1})); }, "tensor x given twice");
    testutil::expect_error([&] { w.add("z", torch::zeros({2}, torch::kComplexFloat)); }, "tensor z");
  }  // destroyed without finish()
  EXPECT_TRUE(fs::is_empty(dir + "/out"));
  fs::remove_all(dir);
}

TEST(Mapping, ReleasedPagesReadBackFromTheFile) {
  auto dir = testutil::temp_dir("release");
  auto big = torch::arange(1 << 20, torch::kFloat32);  // 4 MiB: whole pages inside the tensor
  io::save_safetensors(dir + "/a.safetensors", {{"small", torch::ones({3})}, {"big", big}});
  io::SafetensorsFile f(dir + "/a.safetensors");
  auto view = f.tensor("big");
  EXPECT_TRUE(f.contains(view.data_ptr()));
  EXPECT_TRUE(torch::equal(view, big));
  f.release("big");
  EXPECT_TRUE(torch::equal(view, big));  // faulted in again from the file
  f.release("missing");                  // unknown names are ignored
  fs::remove_all(dir);
}

TEST(ZeroCopyLoad, SameDtypeParametersLieInsideTheMappedFile) {
  auto dir = testutil::temp_dir("zerocopy");
  auto src = testutil::make_random_model(testutil::tiny_config("llama-mha"), 7);
  model::save_model(*src, dir + "/f32");
  const std::string file = dir + "/f32/model.safetensors";

  auto m = model::load_model(dir + "/f32", torch::kFloat32);
  auto maps = private_mappings_of(file);
  ASSERT_FALSE(maps.empty()) << "the loaded model does not keep " << file << " mapped";
  auto want = src->named_parameters(true);
  for (auto& kv : m->named_parameters(true)) {
    EXPECT_TRUE(inside(maps, kv.value())) << kv.key() << " was copied instead of mapped";
    EXPECT_TRUE(torch::equal(kv.value(), want[kv.key()])) << kv.key();
  }

  // Writing through a parameter (as a training step does) changes the model, never the file.
  const std::string before = testutil::slurp(file);
  {
    torch::NoGradGuard ng;
    m->model->norm->weight.add_(1.0);
  }
  EXPECT_TRUE(torch::equal(m->model->norm->weight, want["model.norm.weight"] + 1.0));
  EXPECT_EQ(testutil::slurp(file), before);
  auto again = model::load_model(dir + "/f32", torch::kFloat32);
  EXPECT_TRUE(torch::equal(again->model->norm->weight, want["model.norm.weight"]));

  // Another compute dtype: converted copies, outside the mapping, equal to the stored values cast.
  auto b = model::load_model(dir + "/f32", torch::kBFloat16);
  auto maps_b = private_mappings_of(file);
  for (auto& kv : b->named_parameters(true)) {
    EXPECT_FALSE(inside(maps_b, kv.value())) << kv.key();
    EXPECT_TRUE(torch::equal(kv.value(), want[kv.key()].to(torch::kBFloat16))) << kv.key();
  }
  // The zero-copy model computes what the copied one does.
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 97, {1, 9}, torch::kInt64);
  EXPECT_TRUE(torch::allclose(again->forward(ids), src->forward(ids), 1e-5, 1e-6));
  fs::remove_all(dir);
}

}  // namespace
