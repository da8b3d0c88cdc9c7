// Conversion against stored PyTorch logits (tests/oracle/dumps/convert-llama-gqa): partial RoPE (high, low,
// uniform) with full-rank K/V, where the oracle applies RoPE only to the kept frequency pairs. Runs without
// Python; test_convert.cpp runs the live oracle on every architecture.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/mla_convert.h"
#include "io/config.h"
#include "model/transformer.h"
#include "testing/oracle_dump.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

const char* const kDump = "convert-llama-gqa";
const char* const kStrategies[] = {"high", "low", "uniform"};

std::string convert_with(const std::string& work, const std::string& strategy) {
  convert::ConvertOptions o;
  o.rope = convert::parse_rope_strategy(strategy);
  o.rope_dims = 4;
  o.uniform_start = strategy == "uniform" ? 1 : 0;
  o.svd = "none";
  o.out_dtype = "f32";
  const std::string out = work + "/" + strategy;
  fs::remove_all(out);
  convert::convert_model(work + "/src", out, o, "");
  return out;
}

void regenerate(const std::string& work) {
  auto ids = testutil::dump_ids(2, 10, 97, 2);
  std::ofstream(work + "/ids.json") << testutil::ids_json(ids).dump();
  io::NamedTensors dump{{"ids", ids}};
  for (const std::string strategy : kStrategies) {
    auto out = convert_with(work, strategy);
    std::ofstream(work + "/freqs.json") << nlohmann::json(io::ModelConfig::load(out).mla.freqs).dump();
    testutil::run_oracle_script("torch_ref.py --threads 2 --model " + work + "/src --ids " + work + "/ids.json --out " +
                                work + "/ref.safetensors --partial-rope " + work + "/freqs.json");
    io::SafetensorsFile ref(work + "/ref.safetensors");
    dump.emplace_back("logits-" + strategy, ref.tensor("logits").clone());
  }
  io::save_safetensors(testutil::dump_path(kDump), dump);
}

TEST(ConvertDump, PartialRopeMatchesStoredPyTorchLogits) {
  auto work = testutil::temp_dir("dump-convert");
  model::save_model(*testutil::dump_model("llama-gqa", 8), work + "/src");
  if (testutil::regenerate_dumps()) regenerate(work);
  auto exp = testutil::open_dump(kDump);
  ASSERT_TRUE(exp);
  auto ids = exp->tensor("ids");
  torch::NoGradGuard ng;
  auto orig = model::load_model(work + "/src", torch::kFloat32)->forward(ids);
  for (const std::string strategy : kStrategies) {
    SCOPED_TRACE(strategy);
    auto ref = exp->tensor("logits-" + strategy);
    auto ours = model::load_model(convert_with(work, strategy), torch::kFloat32)->forward(ids);
    ASSERT_EQ(ours.sizes(), ref.sizes());
    EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-4);
    // Partial RoPE really changes the model, so the check above is not trivially true.
    EXPECT_GT((ours - orig).abs().max().item<double>(), 1e-3);
  }
  fs::remove_all(work);
}

}  // namespace
