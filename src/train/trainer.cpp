#include "train/trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/safetensors.h"
#include "io/model_files.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/fault.h"
#include "util/publish_dir.h"
#include "util/json_read.h"
#include "util/progress.h"

namespace mha2mla::train {
namespace fs = std::filesystem;
using nlohmann::json;

Autocast::Autocast(const std::string& precision, const torch::Device& device) {
  if (precision != "bf16") return;
  on_ = true;
  cuda_ = device.is_cuda();
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4
  at::autocast::set_autocast_dtype(cuda_ ? at::kCUDA : at::kCPU, at::kBFloat16);
  at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, true);
#else
  if (cuda_) {
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
#endif
}

Autocast::~Autocast() {
  if (!on_) return;
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4
  at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, false);
#else
  if (cuda_) at::autocast::set_enabled(false);
  else at::autocast::set_cpu_enabled(false);
#endif
  at::autocast::clear_cache();
}

torch::Tensor lm_loss(model::TransformerImpl& m, const torch::Tensor& batch) { return training_loss(m, batch); }

torch::Tensor kl_to_teacher(const torch::Tensor& student_logits, model::TransformerImpl& teacher,
                            const torch::Tensor& batch) {
  const int64_t T = batch.size(1) - 1;
  torch::Tensor t_logp;  // [b, T, V] fp32
  {
    torch::NoGradGuard ng;
    t_logp = torch::log_softmax(teacher.logits(teacher.hidden(batch.narrow(1, 0, T))).to(torch::kFloat32), -1);
  }
  auto s_logp = torch::log_softmax(student_logits.to(torch::kFloat32), -1);
  return (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean();
}

torch::Tensor training_loss(model::TransformerImpl& m, const torch::Tensor& batch, model::TransformerImpl* teacher,
                            double weight) {
  const int64_t T = batch.size(1) - 1;
  auto inputs = batch.narrow(1, 0, T);
  auto targets = batch.narrow(1, 1, T).to(m.device());
  auto logits = m.logits(m.hidden(inputs));  // fp32
  auto ce = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  if (teacher == nullptr || weight == 0) return ce;
  return ce + weight * kl_to_teacher(logits, *teacher, batch);
}

double evaluate(model::TransformerImpl& m, const std::vector<torch::Tensor>& batches, Dist& dist,
                const std::string& precision) {
  torch::NoGradGuard ng;
  const bool was_training = m.is_training();
  m.eval();
  double sum = 0, count = 0;
  {
    Autocast ac(precision, m.device());
    for (size_t i = dist.rank(); i < batches.size(); i += dist.world()) {
      const auto& b = batches[i];
      const double n = static_cast<double>(b.size(0) * (b.size(1) - 1));
      sum += lm_loss(m, b).item<double>() * n;
      count += n;
    }
  }
  auto t = torch::tensor({sum, count}, torch::kFloat64);
  dist.allreduce_sum(t);
  if (was_training) m.train();
  check(t[1].item<double>() > 0, "no validation data");
  return t[0].item<double>() / t[1].item<double>();
}

namespace {

bool is_attn_param(const std::string& name) {
  return name.find("self_attn") != std::string::npos || name.find("norm") != std::string::npos;
}

// What must match for a checkpoint to be resumed.
json run_signature(model::TransformerImpl& m, const TrainOptions& o, const Dist& d) {
  json cfg = m.config().to_json();
  json sig{{"model", {{"model_type", cfg["model_type"]},
                      {"hidden_size", cfg["hidden_size"]},
                      {"num_hidden_layers", cfg["num_hidden_layers"]},
                      {"num_attention_heads", cfg["num_attention_heads"]},
                      {"num_key_value_heads", cfg["num_key_value_heads"]},
                      {"vocab_size", cfg["vocab_size"]},
                      {"intermediate_size", cfg["intermediate_size"]},
                      {"mha2mla", cfg.contains("mha2mla") ? cfg["mha2mla"] : json(nullptr)}}},
           {"seq_len", o.seq_len},
           {"batch", o.batch},
           {"accum", o.accum},
           {"precision", o.precision},
           {"train", o.train},
           {"world_size", d.world()},
           {"zero1", o.zero1},
           {"seed", o.seed}};
  return sig;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

struct LogEntry {
  int64_t step;
  json j;
};

std::vector<LogEntry> read_log(const std::string& path, int64_t upto) {
  std::vector<LogEntry> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    try {
      auto j = json::parse(line);
      int64_t s = j.at("step").get<int64_t>();
      if (s <= upto) out.push_back({s, j});
    } catch (const std::exception&) {
      // A line cut by a crash: drop it; the checkpoint, not the log, is the source of truth.
    }
  }
  return out;
}

}  // namespace

void write_loss_svg(const std::string& path, const std::vector<std::pair<int64_t, double>>& train,
                    const std::vector<std::pair<int64_t, double>>& val) {
  const double W = 720, H = 400, L = 60, R = 20, T = 30, B = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* s : {&train, &val})
    for (const auto& [x, y] : *s) {
      x0 = std::min(x0, double(x));
      x1 = std::max(x1, double(x));
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (train.empty() && val.empty()) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); };
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  s << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
  s << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  for (int i = 0; i <= 4; ++i) {
    double y = y0 + (y1 - y0) * i / 4.0, x = x0 + (x1 - x0) * i / 4.0;
    s << "<text x='" << L - 6 << "' y='" << py(y) + 4 << "' text-anchor='end'>" << std::setprecision(3) << y
      << "</text>\n";
    s << "<text x='" << px(x) << "' y='" << H - B + 16 << "' text-anchor='middle'>" << static_cast<int64_t>(x)
      << "</text>\n";
  }
  s << "<text x='" << (L + W - R) / 2 << "' y='" << H - 10 << "' text-anchor='middle'>step</text>\n";
  s << "<text x='14' y='" << (T + H - B) / 2 << "' transform='rotate(-90 14 " << (T + H - B) / 2
    << ")' text-anchor='middle'>loss</text>\n";
  auto poly = [&](const std::vector<std::pair<int64_t, double>>& pts, const char* color) {
    if (pts.empty()) return;
    s << "<polyline fill='none' stroke='" << color << "' stroke-width='1.5' points='";
    for (const auto& [x, y] : pts) s << px(double(x)) << "," << py(y) << " ";
    s << "'/>\n";
  };
  poly(train, "#1f77b4");
  poly(val, "#d62728");
  for (const auto& [x, y] : val) s << "<circle cx='" << px(double(x)) << "' cy='" << py(y) << "' r='3' fill='#d62728'/>\n";
  s << "<text x='" << W - R - 150 << "' y='" << T - 10 << "' fill='#1f77b4'>train</text>\n";
  s << "<text x='" << W - R - 90 << "' y='" << T - 10 << "' fill='#d62728'>validation</text>\n";
  s << "</svg>\n";
  write_text_atomic(path, s.str());
}

TrainResult run_training(model::TransformerImpl& m, const TrainOptions& o, const BatchFn& batches,
                         const std::vector<torch::Tensor>& val_batches, Dist& dist) {
  check(o.steps >= 1, "--steps must be at least 1");
  check(o.accum >= 1, "--accum must be at least 1");
  check(o.batch >= 1, "--batch must be at least 1");
  check(o.batch % (dist.world() * o.accum) == 0,
        "--batch " + std::to_string(o.batch) + " must be a multiple of nproc × accum (" +
            std::to_string(dist.world() * o.accum) + "): " + std::to_string(dist.world()) +
            " processes cannot share it evenly");
  check(o.precision == "f32" || o.precision == "bf16", "--precision must be f32 or bf16");
  check(o.train == "all" || o.train == "attn", "--train must be all or attn");
  check(m.dtype() == torch::kFloat32, "training keeps fp32 master weights: load the model in f32");
  const fs::path out(o.out), ckdir = out / "checkpoints";
  const std::string log_path = (out / "train_log.jsonl").string();

  // Trainable parameters and optimizer (this rank's shard under ZeRO-1).
  std::vector<std::pair<std::string, torch::Tensor>> trainable;
  for (auto& kv : m.named_parameters(true)) {
    bool on = o.train == "all" || is_attn_param(kv.key());
    kv.value().set_requires_grad(on);
    if (on) trainable.emplace_back(kv.key(), kv.value());
  }
  check(!trainable.empty(), "nothing to train");
  // Without ZeRO-1 every rank owns (and updates) every parameter.
  std::vector<int> owner(trainable.size(), dist.rank());
  if (o.zero1 && dist.world() > 1) {
    // Greedy balance by size: each rank keeps Adam state only for the parameters it owns.
    std::vector<int64_t> load(dist.world(), 0);
    std::vector<size_t> order(trainable.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return trainable[a].second.numel() > trainable[b].second.numel(); });
    for (size_t i : order) {
      int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      owner[i] = r;
      load[r] += trainable[i].second.numel();
    }
  }
  std::vector<std::pair<std::string, torch::Tensor>> mine;
  std::vector<bool> decay;
  for (size_t i = 0; i < trainable.size(); ++i)
    if (owner[i] == dist.rank()) {
      mine.push_back(trainable[i]);
      decay.push_back(trainable[i].second.dim() >= 2);
    }
  AdamW adam(mine, decay, o.adam);
  std::vector<torch::Tensor> params;
  for (auto& [n, p] : trainable) params.push_back(p);

  const json sig = run_signature(m, o, dist);
  int64_t start = 0, tokens = 0;
  std::vector<std::pair<int64_t, double>> curve, val_curve;
  if (o.resume) {
    std::ifstream lf(ckdir / "latest");
    std::string name;
    check(lf && std::getline(lf, name) && !name.empty(), "--resume: no checkpoint in " + ckdir.string());
    const fs::path cp = ckdir / name;
    json st = read_json_file((cp / "state.json").string());
    if (st.value("signature", json()) != sig) {
      std::string diff;
      for (auto it = sig.begin(); it != sig.end(); ++it)
        if (!st["signature"].contains(it.key()) || st["signature"][it.key()] != it.value())
          diff += (diff.empty() ? "" : ", ") + it.key();
      fail("cannot resume from " + cp.string() + ": it was made for another model or configuration (differs in " +
           diff + ")");
    }
    auto ck = io::Checkpoint::open(cp.string());
    model::load_weights(m, ck);
    io::SafetensorsFile of((cp / ("optimizer-rank" + std::to_string(dist.rank()) + ".safetensors")).string());
    start = st.at("step").get<int64_t>();
    tokens = st.at("tokens").get<int64_t>();
    adam.load_state(of, st.at("adam_steps").get<int64_t>());
    for (const auto& e : read_log(log_path, start)) {
      if (e.j.contains("loss")) curve.emplace_back(e.step, e.j["loss"].get<double>());
      if (e.j.contains("val_loss")) val_curve.emplace_back(e.step, e.j["val_loss"].get<double>());
    }
    if (dist.is_main()) {  // drop log lines written after the checkpoint
      std::ostringstream keep;
      for (const auto& e : read_log(log_path, start)) keep << e.j.dump() << "\n";
      write_text_atomic(log_path, keep.str());
    }
  } else if (dist.is_main()) {
    check(!fs::exists(ckdir / "latest"),
          o.out + " already holds a run; pass --resume to continue it or choose another --out");
    fs::create_directories(out);
    write_text_atomic(log_path, "");
  }
  dist.barrier();

  // Every rank writes its optimizer shard into the folder rank 0 prepares; rank 0 publishes it, then
  // points `latest` at it. A kill at any point leaves `latest` naming a complete checkpoint.
  auto save = [&](int64_t step) {
    const std::string name = step_name(step);
    const std::string dst = (ckdir / name).string(), tmp = PublishDir::temp_path(dst);
    std::unique_ptr<PublishDir> pub;
    if (dist.is_main()) pub = std::make_unique<PublishDir>(dst);
    dist.barrier();
    io::save_safetensors((fs::path(tmp) / ("optimizer-rank" + std::to_string(dist.rank()) + ".safetensors")).string(),
                         adam.state());
    fault_point("checkpoint:optimizer_written");
    if (dist.is_main()) {
      model::save_model(m, tmp);
      fault_point("checkpoint:model_written");
      json st{{"step", step}, {"tokens", tokens}, {"adam_steps", adam.steps()}, {"signature", sig}};
      write_text_atomic((fs::path(tmp) / "state.json").string(), st.dump(2) + "\n");
      if (!o.source_dir.empty()) io::copy_tokenizer_files(o.source_dir, tmp);
    }
    dist.barrier();
    if (dist.is_main()) {
      pub->commit();
      fault_point("checkpoint:published");
      write_text_atomic((ckdir / "latest").string(), name + "\n");
      fault_point("checkpoint:latest_written");
      // Keep the two newest checkpoints: the newest, and one in case the newest is damaged later.
      std::vector<std::string> all;
      for (const auto& e : fs::directory_iterator(ckdir)) {
        const std::string fn = e.path().filename().string();
        if (e.is_directory() && fn.rfind("step-", 0) == 0 && !is_publish_temp(fn)) all.push_back(fn);
      }
      std::sort(all.begin(), all.end());
      for (size_t i = 0; i + 2 < all.size(); ++i) {
        fs::remove_all(ckdir / all[i]);
        fault_point("checkpoint:pruned");
      }
    }
    dist.barrier();
  };

  m.train();
  if (o.teacher) {
    check(o.teacher->config().vocab_size == m.config().vocab_size,
          "the distillation teacher's vocabulary differs from the model's");
    o.teacher->eval();
  }
  const int64_t micro_b = o.batch / (dist.world() * o.accum);
  const int64_t tokens_per_step = o.batch * o.seq_len;
  const int64_t end = o.stop_after > 0 ? std::min(o.stop_after, o.steps) : o.steps;
  std::unique_ptr<Progress> bar;
  if (o.progress && dist.is_main()) bar = std::make_unique<Progress>("train", o.steps);
  auto t_start = std::chrono::steady_clock::now();
  TrainResult res;
  double window_tokens = 0, window_secs = 0;
  for (int64_t step = start; step < end; ++step) {
    fault_point("train:step");
    auto t0 = std::chrono::steady_clock::now();
    const double lr = o.schedule.at(step);
    double loss_sum = 0;
    for (int64_t mi = 0; mi < o.accum; ++mi) {
      auto b = batches(step, mi);
      check(b.dim() == 2 && b.size(0) == micro_b && b.size(1) == o.seq_len + 1, "a data batch has the wrong shape");
      torch::Tensor loss;
      {
        Autocast ac(o.precision, m.device());
        loss = training_loss(m, b, o.teacher.get(), o.distill) / static_cast<double>(o.accum);
      }
      loss.backward();
      loss_sum += loss.item<double>();
    }
    std::vector<torch::Tensor> grads;
    for (auto& p : params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
    }
    dist.allreduce_mean(grads);
    auto lt = torch::tensor({loss_sum}, torch::kFloat64);
    dist.allreduce_sum(lt);
    const double loss = lt.item<double>() / dist.world();
    const double gnorm = clip_grad_norm(params, o.clip);
    adam.step(lr);
    if (o.zero1 && dist.world() > 1) {
      torch::NoGradGuard ng;
      for (size_t i = 0; i < trainable.size(); ++i) dist.broadcast(trainable[i].second, owner[i]);
    }
    for (auto& p : params) p.mutable_grad().reset();
    tokens += tokens_per_step;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Throughput leaves out the run's first step, which pays one-off allocation and warm-up costs.
    if (step > start || end - start == 1) {
      window_tokens += static_cast<double>(tokens_per_step);
      window_secs += secs;
    }
    const double tps = window_secs > 0 ? window_tokens / window_secs : tokens_per_step / std::max(secs, 1e-9);
    curve.emplace_back(step + 1, loss);
    res.last_loss = loss;
    json entry{{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm}, {"tokens", tokens},
               {"tokens_per_s", tps}};
    const bool last = step + 1 == o.steps;
    if (!val_batches.empty() && ((o.val_every > 0 && (step + 1) % o.val_every == 0) || last)) {
      double vl = evaluate(m, val_batches, dist, o.precision);
      entry["val_loss"] = vl;
      val_curve.emplace_back(step + 1, vl);
      res.val_loss = vl;
    }
    if (dist.is_main()) {
      std::ofstream(log_path, std::ios::app) << entry.dump() << "\n";
      if (bar) {
        char extra[128];
        std::snprintf(extra, sizeof(extra), "loss %.4f | lr %.2e | %.0f tok/s", loss, lr, tps);
        bar->update(step + 1, extra);
      }
    }
    const bool stop_here = step + 1 == end;
    if ((o.save_every > 0 && (step + 1) % o.save_every == 0) || stop_here) save(step + 1);
    if (dist.is_main() && ((step + 1) % 10 == 0 || stop_here))
      write_loss_svg((out / "loss.svg").string(), curve, val_curve);
  }
  if (bar) bar->finish();
  res.steps = std::max<int64_t>(start, end);
  res.tokens = tokens;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  res.tokens_per_s = window_tokens / std::max(window_secs, 1e-9);
  if (dist.is_main()) write_loss_svg((out / "loss.svg").string(), curve, val_curve);
  for (auto& p : params) p.set_requires_grad(true);
  return res;
}

}  // namespace mha2mla::train
