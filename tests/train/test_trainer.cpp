// The trainer: one step against torch.optim.AdamW, exact resume, the schedule, and --train attn.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/tiny_model.h"
#include "train/trainer.h"
#include "util/error.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

// Deterministic synthetic data: batch (step, micro) is a pure function of its indices.
train::BatchFn synthetic(int64_t b, int64_t t, int64_t vocab) {
  return [=](int64_t step, int64_t micro) {
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + micro + 1));
    // Repeating patterns so the loss can actually fall.
    auto base = at::randint(0, vocab, {b, 8}, gen, torch::kInt64);
    return base.repeat({1, (t + 1 + 7) / 8}).narrow(1, 0, t + 1).contiguous();
  };
}

train::TrainOptions small_opts(const std::string& out, int64_t steps) {
  train::TrainOptions o;
  o.out = out;
  o.steps = steps;
  o.batch = 4;
  o.accum = 2;
  o.seq_len = 16;
  o.schedule.lr = 3e-3;
  o.schedule.warmup = 2;
  o.schedule.decay_start = steps / 2;
  o.schedule.total = steps;
  o.adam.weight_decay = 0.1;
  o.clip = 0.5;
  o.progress = false;
  return o;
}

std::vector<double> losses(const std::string& log) {
  std::vector<double> out;
  std::ifstream f(log);
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return out;
}

TEST(Trainer, StepsMatchTorchAdamW) {
  MHA2MLA_REQUIRE_ORACLE(testutil::python_has_torch(), "Debian python3 with torch not found");
  auto dir = testutil::temp_dir("train-ref");
  auto m = testutil::make_random_model(testutil::tiny_config("llama-gqa"), 3);
  model::save_model(*m, dir + "/init");
  auto opt = small_opts(dir + "/run", 4);
  auto data = synthetic(2, 16, 97);
  nlohmann::json bj = nlohmann::json::array();
  for (int64_t s = 0; s < 4; ++s) {
    nlohmann::json step = nlohmann::json::array();
    for (int64_t mi = 0; mi < 2; ++mi) {
      auto b = data(s, mi);
      nlohmann::json rows = nlohmann::json::array();
      for (int64_t r = 0; r < b.size(0); ++r)
        rows.push_back(std::vector<int64_t>(b[r].data_ptr<int64_t>(), b[r].data_ptr<int64_t>() + b.size(1)));
      step.push_back(rows);
    }
    bj.push_back(step);
  }
  std::ofstream(dir + "/batches.json") << bj.dump();
  dist::Dist dist;
  auto res = train::run_training(*m, opt, data, {}, dist);
  EXPECT_EQ(res.steps, 4);
  std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/train_ref.py --threads 2 --model " +
                    dir + "/init --batches " + dir + "/batches.json --out " + dir + "/ref.safetensors --steps 4 --lr 3e-3 " +
                    "--warmup 2 --decay-start 2 --weight-decay 0.1 --clip 0.5 > " + dir + "/ref.json";
  ASSERT_EQ(testutil::run(cmd), 0) << cmd;
  io::SafetensorsFile ref(dir + "/ref.safetensors");
  auto ref_losses = nlohmann::json::parse(std::ifstream(dir + "/ref.json"))["losses"].get<std::vector<double>>();
  auto ours = losses(dir + "/run/train_log.jsonl");
  ASSERT_EQ(ours.size(), ref_losses.size());
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_NEAR(ours[i], ref_losses[i], 1e-5) << "step " << i + 1;
  double worst = 0;
  auto init = model::load_model(dir + "/init", torch::kFloat32);
  std::map<std::string, torch::Tensor> before;
  for (auto& kv : init->named_parameters()) before[kv.key()] = kv.value();
  // Adam divides by sqrt(v): where a gradient is ~0 its rounding noise is amplified up to ~lr, so
  // compare whole updates by norm rather than elementwise.
  for (auto& kv : m->named_parameters()) {
    auto r = ref.tensor(kv.key()).to(torch::kFloat64);
    auto b0 = before[kv.key()].to(torch::kFloat64);
    auto ours_d = kv.value().to(torch::kFloat64) - b0, ref_d = r - b0;
    double rel = ((ours_d - ref_d).norm() / ref_d.norm()).item<double>();
    worst = std::max(worst, rel);
    EXPECT_GT(ours_d.abs().max().item<double>(), 0.0) << kv.key() << " did not move";
    EXPECT_LE(rel, 1e-3) << kv.key();
  }
  EXPECT_LE(worst, 1e-3);
  fs::remove_all(dir);
}

TEST(Trainer, ResumeFollowsTheSameTrajectory) {
  auto dir = testutil::temp_dir("train-resume");
  auto cfg = testutil::tiny_config("qwen2");
  auto data = synthetic(2, 16, 97);
  dist::Dist dist;
  auto a = testutil::make_random_model(cfg, 4);
  train::run_training(*a, small_opts(dir + "/a", 8), data, {}, dist);

  auto b = testutil::make_random_model(cfg, 4);
  auto ob = small_opts(dir + "/b", 8);
  ob.stop_after = 3;
  train::run_training(*b, ob, data, {}, dist);
  auto b2 = testutil::make_random_model(cfg, 99);  // different weights: all must come from the checkpoint
  ob.stop_after = 0;
  ob.resume = true;
  train::run_training(*b2, ob, data, {}, dist);

  auto la = losses(dir + "/a/train_log.jsonl"), lb = losses(dir + "/b/train_log.jsonl");
  ASSERT_EQ(la.size(), 8u);
  ASSERT_EQ(lb.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i + 1;
  for (auto& kv : a->named_parameters()) {
    auto other = b2->named_parameters()[kv.key()];
    EXPECT_TRUE(torch::equal(kv.value(), other)) << kv.key();
  }
  EXPECT_LT(la.back(), la.front());  // it learns
  EXPECT_TRUE(fs::exists(dir + "/a/loss.svg"));

  // Resuming with another configuration is refused.
  auto oc = small_opts(dir + "/b", 10);
  oc.seq_len = 8;
  oc.resume = true;
  auto c = testutil::make_random_model(cfg, 4);
  try {
    train::run_training(*c, oc, synthetic(2, 8, 97), {}, dist);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model or configuration"), std::string::npos) << e.what();
  }
  // A new run into a used folder is refused without --resume.
  EXPECT_THROW(train::run_training(*c, small_opts(dir + "/a", 2), data, {}, dist), Error);
  fs::remove_all(dir);
}

TEST(Trainer, AttnOnlyLeavesTheRestFrozen) {
  auto dir = testutil::temp_dir("train-attn");
  auto m = testutil::make_random_model(testutil::tiny_config("llama-mha"), 5);
  std::map<std::string, torch::Tensor> before;
  for (auto& kv : m->named_parameters()) before[kv.key()] = kv.value().clone();
  auto o = small_opts(dir + "/run", 3);
  o.train = "attn";
  dist::Dist dist;
  train::run_training(*m, o, synthetic(2, 16, 97), {}, dist);
  for (auto& kv : m->named_parameters()) {
    bool moved = !torch::equal(kv.value(), before[kv.key()]);
    bool attn = kv.key().find("self_attn") != std::string::npos || kv.key().find("norm") != std::string::npos;
    EXPECT_EQ(moved, attn) << kv.key();
  }
  fs::remove_all(dir);
}

TEST(Trainer, BadOptions) {
  auto m = testutil::make_random_model(testutil::tiny_config("llama-mha"), 5);
  dist::Dist dist;
  auto o = small_opts(testutil::temp_dir("train-bad") + "/run", 3);
  o.batch = 3;  // not a multiple of accum 2
  EXPECT_THROW(train::run_training(*m, o, synthetic(1, 16, 97), {}, dist), Error);
  o.batch = 4;
  EXPECT_THROW(train::run_training(*m, o, synthetic(3, 16, 97), {}, dist), Error);  // wrong batch shape
}

// KL(p_t || p_s) from its definition, in fp64, per token, averaged: an independent formula for the loss.
double kl_by_definition(const torch::Tensor& t_logits, const torch::Tensor& s_logits) {
  auto pt = torch::softmax(t_logits.to(torch::kFloat64), -1), ps = torch::softmax(s_logits.to(torch::kFloat64), -1);
  return (pt * (pt.log() - ps.log())).sum(-1).mean().item<double>();
}

TEST(Distill, KlMatchesDefinitionAndVanishesForItself) {
  auto student = testutil::make_random_model(testutil::tiny_config("llama-mha"), 5);
  auto teacher = testutil::make_random_model(testutil::tiny_config("llama-mha"), 6);
  auto batch = synthetic(2, 16, 97)(0, 0);
  auto inputs = batch.narrow(1, 0, 16);
  torch::NoGradGuard ng;
  auto s_logits = student->logits(student->hidden(inputs));
  auto t_logits = teacher->logits(teacher->hidden(inputs));
  const double kl = train::kl_to_teacher(s_logits, *teacher, batch).item<double>();
  EXPECT_GT(kl, 1e-3);
  EXPECT_NEAR(kl, kl_by_definition(t_logits, s_logits), 1e-5 * std::max(1.0, kl));
  EXPECT_NEAR(train::kl_to_teacher(s_logits, *student, batch).item<double>(), 0.0, 1e-6);
  // The training loss is CE + weight · KL.
  const double ce = train::lm_loss(*student, batch).item<double>();
  EXPECT_NEAR(train::training_loss(*student, batch, teacher.get(), 0.5).item<double>(), ce + 0.5 * kl, 1e-5);
  EXPECT_DOUBLE_EQ(train::training_loss(*student, batch, teacher.get(), 0.0).item<double>(), ce);
}

TEST(Distill, GradientOfKlIsTheProbabilityGap) {
  // d KL / d s_logits = (softmax(s) − softmax(t)) / tokens: the gradient pulls the student to the teacher.
  auto teacher = testutil::make_random_model(testutil::tiny_config("llama-gqa"), 7);
  auto batch = synthetic(2, 16, 97)(1, 0);
  auto s_logits = torch::randn({2, 16, 97}, torch::kFloat32).requires_grad_(true);
  train::kl_to_teacher(s_logits, *teacher, batch).backward();
  torch::Tensor t_logits;
  {
    torch::NoGradGuard ng;
    t_logits = teacher->logits(teacher->hidden(batch.narrow(1, 0, 16)));
  }
  auto want = (torch::softmax(s_logits.detach(), -1) - torch::softmax(t_logits, -1)) / 32.0;
  EXPECT_TRUE(torch::allclose(s_logits.grad(), want, 1e-5, 1e-7));
}

TEST(Distill, TrainingTowardsATeacherLowersTheKl) {
  auto teacher = testutil::make_random_model(testutil::tiny_config("llama-mha"), 6);
  auto probe = synthetic(2, 16, 97)(99, 0);
  // The KL to the teacher after 8 steps from the same start, with and without distillation.
  auto kl_after = [&](double weight) {
    auto student = testutil::make_random_model(testutil::tiny_config("llama-mha"), 5);
    auto o = small_opts(testutil::temp_dir("train-distill") + "/run", 8);
    if (weight > 0) {
      o.teacher = teacher.ptr();
      o.distill = weight;
    }
    dist::Dist dist;
    if (weight >= 0) train::run_training(*student, o, synthetic(2, 16, 97), {}, dist);
    fs::remove_all(fs::path(o.out).parent_path());
    torch::NoGradGuard ng;
    return train::kl_to_teacher(student->logits(student->hidden(probe.narrow(1, 0, 16))), *teacher, probe).item<double>();
  };
  const double start = kl_after(-1), plain = kl_after(0), distilled = kl_after(5.0);
  EXPECT_LT(distilled, 0.95 * start);
  EXPECT_LT(distilled, 0.95 * plain);
}

TEST(Evaluate, Bf16AutocastMatchesF32) {
  // Evaluation under bf16 autocast runs the fused inference kernels (no grad) with mixed input dtypes.
  auto m = testutil::make_random_model(testutil::tiny_config("llama-gqa"), 8);
  std::vector<torch::Tensor> val{synthetic(2, 16, 97)(0, 0), synthetic(2, 16, 97)(1, 0)};
  dist::Dist dist;
  const double f32 = train::evaluate(*m, val, dist, "f32");
  const double bf16 = train::evaluate(*m, val, dist, "bf16");
  EXPECT_NEAR(bf16, f32, 0.02 * f32);
}

TEST(Schedule, WarmupStableDecay) {
  train::Schedule s;
  s.lr = 1.0;
  s.min_lr = 0.1;
  s.warmup = 10;
  s.decay_start = 50;
  s.total = 100;
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(30), 1.0);
  EXPECT_DOUBLE_EQ(s.at(50), 1.0);
  EXPECT_NEAR(s.at(75), 0.1 + 0.9 * (1 - std::sqrt(0.5)), 1e-12);
  EXPECT_NEAR(s.at(100), 0.1, 1e-12);
  s.decay = "cosine";
  EXPECT_NEAR(s.at(75), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_NEAR(s.at(100), 0.1, 1e-12);
}

}  // namespace
