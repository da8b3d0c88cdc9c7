// Stored outputs of the independent PyTorch oracle (tests/oracle/*.py) for the tiny configurations, as
// llm.c's test_gpt2 keeps its reference state: the model (weights rounded to F16, so they store exactly),
// the inputs and the oracle's outputs. These checks run without Python; the live-oracle tests beside the
// code they test run the oracle itself. MHA2MLA_REGENERATE_DUMPS=1 rewrites the dumps from the oracle.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "convert/mla_convert.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"
#include "train/trainer.h"
#include "util/atomic_file.h"

using namespace mha2mla;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kDumps = MHA2MLA_SOURCE_DIR "/tests/oracle/dumps";

bool regenerate() {
  const char* e = std::getenv("MHA2MLA_REGENERATE_DUMPS");
  return e && std::string(e) == "1";
}

torch::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(0, vocab, {b, t}, gen, torch::kInt64);
}

// A random tiny model whose weights are exact in F16, so the dump stores them at half the size.
model::Transformer f16_exact_model(const std::string& kind, uint64_t seed) {
  auto m = testutil::make_random_model(testutil::tiny_config(kind), seed);
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.copy_(p.to(torch::kFloat16).to(torch::kFloat32));
  return m;
}

void write_f16_model(model::TransformerImpl& m, const std::string& dir) {
  io::NamedTensors w;
  for (auto& [n, t] : model::named_weights(m)) w.emplace_back(n, t.to(torch::kFloat16));
  fs::create_directories(dir);
  io::save_checkpoint(dir, w);
  auto cfg = m.config().to_json();
  cfg["torch_dtype"] = io::torch_dtype_name(torch::kFloat16);
  write_text_atomic(dir + "/config.json", cfg.dump(2) + "\n");
}

std::string ids_json(const torch::Tensor& ids) {
  json j = json::array();
  for (int64_t b = 0; b < ids.size(0); ++b)
    j.push_back(std::vector<int64_t>(ids[b].data_ptr<int64_t>(), ids[b].data_ptr<int64_t>() + ids.size(1)));
  return j.dump();
}

// Runs the Python oracle; only when regenerating.
void oracle(const std::string& args) {
  ASSERT_TRUE(testutil::python_has_torch()) << "regenerating the dumps needs /usr/bin/python3 with torch";
  const std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/" + args;
  ASSERT_EQ(testutil::run(cmd), 0) << cmd;
}

std::string kind_name(std::string s) {
  for (auto& c : s)
    if (c == '-') c = '_';
  return s;
}

// ---------------------------------------------------------------------------------------------- logits

class LogitsDump : public ::testing::TestWithParam<std::string> {};

TEST_P(LogitsDump, MatchesStoredPyTorchLogits) {
  const std::string kind = GetParam(), dump = kDumps + "/logits-" + kind;
  if (regenerate()) {
    auto tmp = testutil::temp_dir("dump-" + kind);
    auto m = f16_exact_model(kind, 7);
    model::save_model(*m, tmp);
    auto ids = random_ids(2, 40, m->config().vocab_size, 11);
    std::ofstream(tmp + "/ids.json") << ids_json(ids);
    oracle("torch_ref.py --threads 2 --model " + tmp + " --ids " + tmp + "/ids.json --out " + tmp + "/ref.safetensors");
    auto ref = io::SafetensorsFile(tmp + "/ref.safetensors").tensor("logits");
    fs::remove_all(dump);
    write_f16_model(*m, dump);
    io::save_safetensors(dump + "/expected.safetensors", {{"ids", ids}, {"logits", ref.clone()}});
    fs::remove_all(tmp);
  }
  ASSERT_TRUE(fs::exists(dump + "/expected.safetensors")) << "missing dump " << dump;
  io::SafetensorsFile exp(dump + "/expected.safetensors");
  auto ids = exp.tensor("ids"), ref = exp.tensor("logits");
  auto m = model::load_model(dump, torch::kFloat32);
  torch::NoGradGuard ng;
  auto ours = m->forward(ids);
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-4) << kind;
  EXPECT_GT(ref.abs().max().item<double>(), 0.1) << "reference logits are degenerate";
}

INSTANTIATE_TEST_SUITE_P(Tiny, LogitsDump, ::testing::Values("llama-mha", "llama-gqa", "qwen2", "qwen3"),
                         [](const auto& info) { return kind_name(info.param); });

// ---------------------------------------------------------------------------------------------- conversion

// Partial RoPE (high, low, uniform) with full-rank K/V: the oracle applies RoPE only to the kept pairs.
TEST(ConvertDump, PartialRopeMatchesStoredPyTorchLogits) {
  const std::string dump = kDumps + "/convert-llama-gqa";
  auto work = testutil::temp_dir("dump-convert");
  if (regenerate()) {
    auto m = f16_exact_model("llama-gqa", 8);
    model::save_model(*m, work + "/src");
    fs::remove_all(dump);
    write_f16_model(*m, dump + "/source");
  }
  ASSERT_TRUE(fs::exists(dump + "/source/config.json")) << "missing dump " << dump;
  for (const std::string strategy : {"high", "low", "uniform"}) {
    SCOPED_TRACE(strategy);
    convert::ConvertOptions o;
    o.rope = convert::parse_rope_strategy(strategy);
    o.rope_dims = 4;
    o.uniform_start = strategy == "uniform" ? 1 : 0;
    o.svd = "none";
    o.out_dtype = "f32";
    const std::string out = work + "/" + strategy;
    convert::convert_model(dump + "/source", out, o, "");
    const std::string expected = dump + "/expected-" + strategy + ".safetensors";
    if (regenerate()) {
      auto ids = random_ids(2, 25, 97, 2);
      std::ofstream(work + "/ids.json") << ids_json(ids);
      std::ofstream(work + "/freqs.json") << json(io::ModelConfig::load(out).mla.freqs).dump();
      oracle("torch_ref.py --threads 2 --model " + work + "/src --ids " + work + "/ids.json --out " + work +
             "/ref.safetensors --partial-rope " + work + "/freqs.json");
      auto ref = io::SafetensorsFile(work + "/ref.safetensors").tensor("logits");
      io::save_safetensors(expected, {{"ids", ids}, {"logits", ref.clone()}});
    }
    io::SafetensorsFile exp(expected);
    auto ids = exp.tensor("ids"), ref = exp.tensor("logits");
    torch::NoGradGuard ng;
    auto ours = model::load_model(out, torch::kFloat32)->forward(ids);
    EXPECT_LE((ours - ref).abs().max().item<double>(), 1e-4);
    // Partial RoPE really changes the model.
    auto orig = model::load_model(dump + "/source", torch::kFloat32)->forward(ids);
    EXPECT_GT((ours - orig).abs().max().item<double>(), 1e-3);
  }
  fs::remove_all(work);
}

// ---------------------------------------------------------------------------------------------- AdamW

// Four AdamW steps (warmup, decay, weight decay, clipping, accumulation) against torch.optim.AdamW.
TEST(AdamWDump, StepsMatchStoredTorchAdamW) {
  const std::string dump = kDumps + "/adamw-llama-gqa";
  auto work = testutil::temp_dir("dump-adamw");
  constexpr int64_t kSteps = 4, kAccum = 2, kRows = 2, kT = 16;
  if (regenerate()) {
    auto m = f16_exact_model("llama-gqa", 3);
    model::save_model(*m, work + "/init");
    auto gen = at::detail::createCPUGenerator(5);
    // Repeating patterns so the loss can actually fall. [step, micro, row, T + 1]
    auto base = at::randint(0, 97, {kSteps, kAccum, kRows, 8}, gen, torch::kInt64);
    auto batches = base.repeat({1, 1, 1, (kT + 1 + 7) / 8}).narrow(3, 0, kT + 1).contiguous();
    json bj = json::array();
    for (int64_t s = 0; s < kSteps; ++s) {
      json step = json::array();
      for (int64_t mi = 0; mi < kAccum; ++mi) step.push_back(json::parse(ids_json(batches[s][mi])));
      bj.push_back(step);
    }
    std::ofstream(work + "/batches.json") << bj.dump();
    oracle("train_ref.py --threads 2 --model " + work + "/init --batches " + work + "/batches.json --out " + work +
           "/ref.safetensors --steps 4 --lr 3e-3 --warmup 2 --decay-start 2 --weight-decay 0.1 --clip 0.5 > " + work +
           "/ref.json");
    auto losses = json::parse(std::ifstream(work + "/ref.json"))["losses"].get<std::vector<double>>();
    fs::remove_all(dump);
    write_f16_model(*m, dump + "/init");
    io::NamedTensors exp{{"batches", batches}, {"losses", torch::tensor(losses, torch::kFloat64)}};
    io::SafetensorsFile ref(work + "/ref.safetensors");
    for (const auto& t : ref.tensors()) exp.emplace_back("final." + t.name, ref.tensor(t.name).clone());
    io::save_safetensors(dump + "/expected.safetensors", exp);
  }
  ASSERT_TRUE(fs::exists(dump + "/expected.safetensors")) << "missing dump " << dump;
  io::SafetensorsFile exp(dump + "/expected.safetensors");
  auto batches = exp.tensor("batches");
  auto ref_losses = exp.tensor("losses");
  ASSERT_EQ(batches.sizes(), (std::vector<int64_t>{kSteps, kAccum, kRows, kT + 1}));

  auto m = model::load_model(dump + "/init", torch::kFloat32);
  std::map<std::string, torch::Tensor> before;
  for (auto& kv : m->named_parameters()) before[kv.key()] = kv.value().clone();
  train::TrainOptions o;
  o.out = work + "/run";
  o.steps = kSteps;
  o.batch = kRows * kAccum;
  o.accum = kAccum;
  o.seq_len = kT;
  o.schedule.lr = 3e-3;
  o.schedule.warmup = 2;
  o.schedule.decay_start = 2;
  o.schedule.total = kSteps;
  o.adam.weight_decay = 0.1;
  o.clip = 0.5;
  o.progress = false;
  train::Dist dist;
  m->train();
  train::run_training(*m, o, [&](int64_t s, int64_t mi) { return batches[s][mi].clone(); }, {}, dist);

  std::ifstream log(o.out + "/train_log.jsonl");
  std::vector<double> ours;
  for (std::string line; std::getline(log, line);)
    if (!line.empty()) ours.push_back(json::parse(line)["loss"].get<double>());
  ASSERT_EQ(int64_t(ours.size()), kSteps);
  for (int64_t i = 0; i < kSteps; ++i) EXPECT_NEAR(ours[i], ref_losses[i].item<double>(), 1e-5) << "step " << i + 1;
  // Adam divides by sqrt(v): where a gradient is ~0 its rounding noise is amplified, so compare whole updates.
  for (auto& kv : m->named_parameters()) {
    auto b0 = before[kv.key()].to(torch::kFloat64);
    auto ours_d = kv.value().detach().to(torch::kFloat64) - b0;
    auto ref_d = exp.tensor("final." + kv.key()).to(torch::kFloat64) - b0;
    EXPECT_GT(ours_d.abs().max().item<double>(), 0.0) << kv.key() << " did not move";
    EXPECT_LE(((ours_d - ref_d).norm() / ref_d.norm()).item<double>(), 1e-3) << kv.key();
  }
  fs::remove_all(work);
}

}  // namespace
