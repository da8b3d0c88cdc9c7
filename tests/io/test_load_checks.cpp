// Files from elsewhere: hostile nesting, weights of the wrong kind, out-of-range config fields, shard paths
// outside the model folder, and the dtype a written config.json declares.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/mla_convert.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"
#include "util/atomic_file.h"
#include "util/json_read.h"

using namespace mha2mla;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string nested(int depth) { return std::string(depth, '[') + "1" + std::string(depth, ']'); }

std::string safetensors_bytes(const std::string& header) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = char(n >> (8 * i));
  return out + header;
}

TEST(JsonDepth, BoundedBeforeParsing) {
  EXPECT_EQ(json_depth("{\"a\": [1, {\"b\": []}]}"), 4);  // object, array, object, array
  EXPECT_EQ(json_depth("\"[[[[\" "), 0);  // brackets in strings do not count
  EXPECT_EQ(json_depth(R"(["\"[[[", 1])"), 1);
  EXPECT_EQ(json_depth(nested(kMaxJsonDepth)), kMaxJsonDepth);
  EXPECT_NO_THROW(parse_json(nested(kMaxJsonDepth), "x.json"));
  testutil::expect_error([] { parse_json(nested(kMaxJsonDepth + 1), "x.json"); }, "x.json: JSON nested deeper than 64");
  testutil::expect_error([] { parse_json(nested(200000), "x.json"); }, "nested deeper");
  testutil::expect_error([] { parse_json("{\"a\": ", "x.json"); }, "x.json: malformed JSON");
}

class LoadChecks : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testutil::temp_dir("load-checks"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string p(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

// A header that is valid JSON but nests a shape 200,000 levels deep: a clean error, not a stack overflow.
TEST_F(LoadChecks, DeeplyNestedSafetensorsHeader) {
  const std::string f = p("deep.safetensors");
  testutil::write_file(f, safetensors_bytes("{\"w\": {\"dtype\": \"F32\", \"shape\": " + nested(200000) +
                                            ", \"data_offsets\": [0, 0]}}"));
  testutil::expect_error([&] { io::SafetensorsFile s(f); }, f);
  testutil::expect_error([&] { io::SafetensorsFile s(f); }, "nested deeper");
  // Through the CLI: one line naming the file, non-zero exit, no crash.
  fs::create_directories(p("m"));
  testutil::write_file(p("m/config.json"), testutil::tiny_config("llama-mha").dump());
  fs::copy_file(f, p("m/model.safetensors"));
  auto r = testutil::run_cli("inspect --model " + p("m"));
  testutil::expect_one_line_error(r, "nested deeper");
  EXPECT_LT(r.code, 128) << "killed by a signal";
}

TEST_F(LoadChecks, DeeplyNestedConfigAndIndex) {
  fs::create_directories(p("m"));
  testutil::write_file(p("m/config.json"), "{\"model_type\": " + nested(100000) + "}");
  testutil::expect_error([&] { io::ModelConfig::load(p("m")); }, "config.json: JSON nested deeper");
  testutil::write_file(p("m/model.safetensors.index.json"), "{\"weight_map\": " + nested(100000) + "}");
  testutil::expect_error([&] { io::Checkpoint::open(p("m")); }, "model.safetensors.index.json: JSON nested deeper");
}

TEST_F(LoadChecks, ShardPathsStayInsideTheModelFolder) {
  fs::create_directories(p("m"));
  io::save_safetensors(p("outside.safetensors"), {{"a", torch::ones({2})}});
  io::save_safetensors(p("m/inside.safetensors"), {{"b", torch::ones({2})}});
  const std::string idx = p("m/model.safetensors.index.json");
  for (const std::string& bad :
       std::vector<std::string>{"../outside.safetensors", p("outside.safetensors"), "sub/../../outside.safetensors", ""}) {
    SCOPED_TRACE(bad);
    write_text_atomic(idx, json{{"weight_map", {{"a", bad}}}}.dump());
    testutil::expect_error([&] { io::Checkpoint::open(p("m")); }, "not a file name inside the model folder");
    testutil::expect_error([&] { io::Checkpoint::open(p("m")); }, idx);
  }
  write_text_atomic(idx, json{{"weight_map", {{"b", "inside.safetensors"}}}}.dump());
  EXPECT_TRUE(io::Checkpoint::open(p("m")).has("b"));
  write_text_atomic(idx, json{{"weight_map", {{"b", "./inside.safetensors"}}}}.dump());
  EXPECT_TRUE(io::Checkpoint::open(p("m")).has("b"));
}

// Only float-to-float casts: an integer or bool tensor where a weight belongs is another file.
TEST_F(LoadChecks, WeightDtypesAreCheckedAgainstParameters) {
  auto cfg = testutil::tiny_config("llama-mha");
  auto m = testutil::make_random_model(cfg, 1);
  model::save_model(*m, p("ok"));
  EXPECT_NO_THROW(model::load_model(p("ok"), torch::kFloat32));
  const std::string victim = "model.layers.0.mlp.up_proj.weight";
  for (auto bad : {torch::kInt64, torch::kUInt8, torch::kBool, torch::kInt32}) {
    SCOPED_TRACE(c10::toString(bad));
    io::NamedTensors w = model::named_weights(*m);
    for (auto& [n, t] : w)
      if (n == victim) t = t.to(bad);
    fs::remove_all(p("bad"));
    io::save_checkpoint(p("bad"), w);
    fs::copy_file(p("ok/config.json"), p("bad/config.json"));
    testutil::expect_error([&] { model::load_model(p("bad"), torch::kFloat32); }, victim);
    testutil::expect_error([&] { model::load_model(p("bad"), torch::kFloat32); },
                           std::string("has dtype ") + io::dtype_name(io::from_torch(bad)));
  }
  // float-to-float is fine: bf16 and f16 weights load into an f32 model.
  for (auto ok : {torch::kBFloat16, torch::kFloat16, torch::kFloat64}) {
    io::NamedTensors w = model::named_weights(*m);
    for (auto& [n, t] : w) t = t.to(ok);
    fs::remove_all(p("cast"));
    io::save_checkpoint(p("cast"), w);
    fs::copy_file(p("ok/config.json"), p("cast/config.json"));
    EXPECT_NO_THROW(model::load_model(p("cast"), torch::kFloat32)) << c10::toString(ok);
  }
}

json mla_config(int64_t start) {
  auto j = testutil::tiny_config("llama-mha");  // head_dim 16: 8 frequency pairs
  j["mha2mla"] = {{"partial_rope_version", "uniform"}, {"rope_dim_for_mla", 4}, {"uniform_start_point", start},
                  {"svd_init_method", "joint"}, {"low_rank", 8}};
  return j;
}

// The reference's uniform strategy keeps pairs start, start + head_dim/r, ...: all must exist.
TEST_F(LoadChecks, UniformStartPointIsRangeChecked) {
  // r = 4 keeps 2 pairs with step 16/4 = 4: start + 4 <= 7, so start in [0, 4).
  for (int64_t s : {0, 1, 3}) {
    auto c = io::ModelConfig::from_json(mla_config(s), "config.json");
    EXPECT_EQ(c.mla.freqs[0][0], (std::vector<int64_t>{s, s + 4}));
  }
  for (int64_t s : std::vector<int64_t>{4, 7, 1000, -1, int64_t(1) << 62}) {
    SCOPED_TRACE(s);
    testutil::expect_error([&] { io::ModelConfig::from_json(mla_config(s), "m/config.json"); },
                           "m/config.json: mha2mla.uniform_start_point");
  }
}

TEST_F(LoadChecks, ConfigSizesAreBounded) {
  for (auto [field, value] : std::vector<std::pair<std::string, int64_t>>{
           {"vocab_size", int64_t(1) << 40}, {"hidden_size", int64_t(1) << 40}, {"num_hidden_layers", int64_t(1) << 30},
           {"max_position_embeddings", -5}}) {
    SCOPED_TRACE(field);
    auto j = testutil::tiny_config("llama-mha");
    j[field] = value;
    testutil::expect_error([&] { io::ModelConfig::from_json(j, "c.json"); }, field);
  }
}

// config.json's torch_dtype always names the dtype the weights were written in.
TEST_F(LoadChecks, TorchDtypeMatchesTheWrittenWeights) {
  EXPECT_EQ(io::torch_dtype_name(torch::kFloat32), "float32");
  EXPECT_EQ(io::torch_dtype_name(torch::kBFloat16), "bfloat16");
  EXPECT_EQ(io::torch_dtype_name(torch::kFloat16), "float16");
  EXPECT_THROW(io::torch_dtype_name(torch::kInt64), Error);
  auto m = testutil::make_random_model(testutil::tiny_config("llama-mha"), 2);
  model::save_model(*m, p("src"));
  for (const std::string d : {"f16", "bf16", "f32"}) {
    SCOPED_TRACE(d);
    convert::ConvertOptions o;
    o.rope = convert::parse_rope_strategy("high");
    o.rope_dims = 4;
    o.svd = "joint";
    o.dkv = 8;
    o.out_dtype = d;
    convert::convert_model(p("src"), p("mla-" + d), o, "");
    const auto want = model::parse_compute_dtype(d);
    EXPECT_EQ(io::ModelConfig::load(p("mla-" + d)).torch_dtype, io::torch_dtype_name(want));
    auto ck = io::Checkpoint::open(p("mla-" + d));
    EXPECT_EQ(io::to_torch(ck.info("model.layers.0.self_attn.q_proj.weight").dtype), want);
    auto r = testutil::run_cli("cast --model " + p("src") + " --out " + p("cast-" + d) + " --dtype " + d);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(io::ModelConfig::load(p("cast-" + d)).torch_dtype, io::torch_dtype_name(want));
    EXPECT_EQ(io::to_torch(io::Checkpoint::open(p("cast-" + d)).info("model.norm.weight").dtype), want);
  }
}

}  // namespace
