// Four AdamW steps (warmup, decay, weight decay, clipping, accumulation) against stored torch.optim.AdamW
// results (tests/oracle/dumps/adamw-llama-gqa), so the check also runs without Python; test_trainer.cpp runs
// the live oracle. The dump keeps the per-step losses and, per parameter, the norm of the whole update and a
// random sketch of it (16 projections), which is a few KB where the updated weights would be 270 KB.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "model/transformer.h"
#include "testing/oracle_dump.h"
#include "train/trainer.h"

using namespace mha2mla;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kDump = "adamw-llama-gqa";
constexpr int64_t kSteps = 4, kAccum = 2, kRows = 2, kT = 16, kSketch = 16;

// [kSketch] projections of a parameter's update on fixed random directions (one stream per parameter and row).
// For an error e, E‖R e‖² = kSketch ‖e‖², so the sketched relative error estimates the whole one.
torch::Tensor sketch(const torch::Tensor& delta, uint64_t param_index) {
  auto d = delta.reshape({-1}).to(torch::kFloat64);
  auto out = torch::empty({kSketch}, torch::kFloat64);
  for (int64_t k = 0; k < kSketch; ++k) {
    auto r = testutil::dump_values(99, 1000 + param_index * kSketch + uint64_t(k), d.numel(), 1.0, torch::kFloat64);
    out[k] = (r * d).sum();
  }
  return out;
}

// [step, micro, row, T + 1] token ids: repeating patterns, so the loss can actually fall.
torch::Tensor make_batches() {
  auto base = testutil::dump_ids(kSteps * kAccum * kRows, 8, 97, 5).view({kSteps, kAccum, kRows, 8});
  return base.repeat({1, 1, 1, (kT + 1 + 7) / 8}).narrow(3, 0, kT + 1).contiguous();
}

void regenerate(const std::string& work) {
  auto batches = make_batches();
  json bj = json::array();
  for (int64_t s = 0; s < kSteps; ++s) {
    json step = json::array();
    for (int64_t mi = 0; mi < kAccum; ++mi) step.push_back(testutil::ids_json(batches[s][mi]));
    bj.push_back(step);
  }
  std::ofstream(work + "/batches.json") << bj.dump();
  testutil::run_oracle_script("train_ref.py --threads 2 --model " + work + "/init --batches " + work +
                              "/batches.json --out " + work + "/ref.safetensors --steps 4 --lr 3e-3 --warmup 2 " +
                              "--decay-start 2 --weight-decay 0.1 --clip 0.5 > " + work + "/ref.json");
  auto losses = json::parse(std::ifstream(work + "/ref.json"))["losses"].get<std::vector<double>>();
  io::NamedTensors dump{{"batches", batches}, {"losses", torch::tensor(losses, torch::kFloat64)}};
  auto init = model::load_model(work + "/init", torch::kFloat32);
  io::SafetensorsFile ref(work + "/ref.safetensors");
  uint64_t i = 0;
  for (auto& kv : init->named_parameters()) {
    auto delta = ref.tensor(kv.key()).to(torch::kFloat64) - kv.value().detach().to(torch::kFloat64);
    dump.emplace_back("norm." + kv.key(), delta.norm().reshape({1}));
    dump.emplace_back("sketch." + kv.key(), sketch(delta, i++));
  }
  io::save_safetensors(testutil::dump_path(kDump), dump);
}

TEST(AdamWDump, StepsMatchStoredTorchAdamW) {
  auto work = testutil::temp_dir("dump-adamw");
  auto m = testutil::dump_model("llama-gqa", 3);
  model::save_model(*m, work + "/init");
  if (testutil::regenerate_dumps()) regenerate(work);
  auto exp = testutil::open_dump(kDump);
  ASSERT_TRUE(exp);
  auto batches = exp->tensor("batches"), ref_losses = exp->tensor("losses");
  ASSERT_EQ(batches.sizes(), (std::vector<int64_t>{kSteps, kAccum, kRows, kT + 1}));
  ASSERT_EQ(ref_losses.numel(), kSteps);

  std::map<std::string, torch::Tensor> before;
  for (auto& kv : m->named_parameters()) before[kv.key()] = kv.value().detach().clone();
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
  dist::Dist dist;
  m->train();
  train::run_training(*m, o, [&](int64_t s, int64_t mi) { return batches[s][mi].clone(); }, {}, dist);

  std::ifstream log(o.out + "/train_log.jsonl");
  std::vector<double> ours;
  for (std::string line; std::getline(log, line);)
    if (!line.empty()) ours.push_back(json::parse(line)["loss"].get<double>());
  ASSERT_EQ(int64_t(ours.size()), kSteps);
  for (int64_t i = 0; i < kSteps; ++i) EXPECT_NEAR(ours[i], ref_losses[i].item<double>(), 1e-5) << "step " << i + 1;
  // Adam divides by sqrt(v): where a gradient is ~0 its rounding noise is amplified, so compare whole updates.
  uint64_t i = 0;
  for (auto& kv : m->named_parameters()) {
    SCOPED_TRACE(kv.key());
    auto delta = kv.value().detach().to(torch::kFloat64) - before[kv.key()].to(torch::kFloat64);
    const double ref_norm = exp->tensor("norm." + kv.key()).item<double>();
    ASSERT_GT(ref_norm, 0.0);
    EXPECT_GT(delta.abs().max().item<double>(), 0.0) << "did not move";
    EXPECT_LE(std::abs(delta.norm().item<double>() - ref_norm) / ref_norm, 1e-3);
    auto diff = sketch(delta, i++) - exp->tensor("sketch." + kv.key());
    EXPECT_LE(diff.norm().item<double>() / (std::sqrt(double(kSketch)) * ref_norm), 1e-3);
  }
  fs::remove_all(work);
}

}  // namespace
