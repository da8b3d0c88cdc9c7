// mha2mla train: (pre)training or fine-tuning on token shards, on one or several processes.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "cli/cli.h"
#include "cli/local_ranks.h"
#include "cli/options.h"
#include "io/model_folder.h"
#include "model/runtime_options.h"
#include "train/recipe.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/text.h"

namespace mha2mla::cli {

void add_train_options(OptionTable& t, train::TrainOptions& o, TrainFlags& f, bool finetune) {
  f.finetune = finetune;
  f.val_windows = finetune ? -1 : 64;
  t.integer("steps", "N", "optimizer steps", o.steps, 1)
      .integer("batch", "B", "sequences per step over all processes", o.batch, 1)
      .integer("seq-len", "T", "tokens per sequence", o.seq_len, 1)
      .integer("accum", "A", "micro-batches per step and process", o.accum, 1)
      .value("lr", "X", "peak learning rate", [&f](const std::string& v) {
        f.lr = parse_number("lr", v);
        check(f.lr > 0, "--lr must be positive");
      }, f.lr > 0 ? [&f] { std::ostringstream d; d << f.lr; return d.str(); }() : finetune ? "1e-4" : "1e-3")
      .number("min-lr", "X", "final learning rate", o.schedule.min_lr)
      .integer("warmup", "W", "linear warmup steps", f.warmup, 0, finetune ? "steps/10" : "steps/20")
      .integer("decay-start", "S", "step where the decay begins", f.decay_start, 0, finetune ? "5·steps/6" : "4·steps/5")
      .value("decay", "D", "1-sqrt | cosine | none",
             [&o](const std::string& v) { o.schedule.decay = parse_choice("decay", v, {"1-sqrt", "cosine", "none"}); },
             "1-sqrt")
      .number("weight-decay", "X", "AdamW weight decay on matrices; betas 0.9/0.95, eps 1e-8", f.weight_decay,
              finetune ? "0" : "0.01")
      .number("clip", "X", "gradient-norm clip (0 = off)", o.clip)
      .value("precision", "P", "f32 | bf16 (bf16 compute, fp32 master weights)",
             [&o](const std::string& v) { o.precision = parse_choice("precision", v, {"f32", "bf16"}); }, o.precision)
      .value("train", "S", "all | attn (attention and norm parameters only)",
             [&o](const std::string& v) { o.train = parse_choice("train", v, {"all", "attn"}); }, "all")
      .integer("val-every", "N", "validate every N steps", f.val_every, 1, "steps/10")
      .integer("val-windows", "N", "validation windows used (-1 = all)", f.val_windows, -1)
      .integer("save-every", "N", "checkpoint every N steps; always at the end", f.save_every, 1, "steps/5")
      .value("seed", "S", "data order seed", [&o](const std::string& v) { o.seed = static_cast<uint64_t>(parse_int("seed", v)); },
             "42")
      .integer("stop-after", "N", "stop after step N with a checkpoint, as if interrupted (resume with --resume)",
               o.stop_after, 0)
      .value("device", "D", "cpu, cuda or cuda:N; with several processes on GPUs, rank r uses cuda:LOCAL_RANK",
             [&o](const std::string& v) { o.device = model::parse_device(v); }, "cpu");
}

void finish_train_options(train::TrainOptions& o, const TrainFlags& f) {
  o.schedule.lr = f.lr > 0 ? f.lr : (f.finetune ? 1e-4 : 1e-3);
  o.schedule.warmup = f.warmup >= 0 ? f.warmup : (f.finetune ? std::max<int64_t>(1, o.steps / 10) : o.steps / 20);
  o.schedule.decay_start = f.decay_start >= 0 ? f.decay_start : (f.finetune ? o.steps * 5 / 6 : o.steps * 4 / 5);
  o.schedule.total = o.steps;
  o.adam.weight_decay = f.weight_decay >= 0 ? f.weight_decay : (f.finetune ? 0.0 : 0.01);
  o.val_every = f.val_every > 0 ? f.val_every : std::max<int64_t>(1, o.steps / 10);
  o.save_every = f.save_every > 0 ? f.save_every : std::max<int64_t>(1, o.steps / 5);
}

int cmd_train(const Args& a) {
  train::TrainOptions o;
  TrainFlags f;
  std::string model, out, val_path;
  std::vector<std::string> data_specs;
  int64_t nproc = 1;
  bool json = false;
  OptionTable t("train", "--model DIR --data PATH[:WEIGHT]... --val PATH --out DIR [options]",
                "Trains all (or only attention) parameters of the model in DIR on token shards made by\n"
                "'mha2mla data' (or datatrove .ds files), sampling windows from a weighted mixture of sources.\n"
                "Writes OUT/model (the trained HF folder), OUT/checkpoints/ (atomic, resumable), OUT/train_log.jsonl\n"
                "and OUT/loss.svg.");
  t.required("model", "DIR", "starting model (use 'mha2mla init' for a fresh one)", [&](auto& v) { model = v; })
      .multi("data", "P[:W]...", "training shard folders or files, each with an optional mixture weight",
             [&](auto& v) { data_specs = v; }, true)
      .required("val", "PATH", "validation shards (a folder gives its val.bin)", [&](auto& v) { val_path = v; })
      .required("out", "DIR", "run folder", [&](auto& v) { out = v; });
  add_train_options(t, o, f, /*finetune=*/false);
  t.toggle("resume", "continue the run in OUT from its latest checkpoint", o.resume)
      .toggle("zero1", "shard AdamW state across processes", o.zero1)
      .integer("nproc", "N",
               "data-parallel processes on this machine (c10d: Gloo on CPU, NCCL on GPUs); across machines,\n"
               "start one process per rank with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set",
               nproc, 1)
      .toggle("json", "print {steps, tokens, loss, val_loss, val_ppl, tokens_per_s, seconds}", json);
  if (!t.parse(a)) return 0;
  finish_train_options(o, f);
  o.out = out;
  if (starts_local_ranks(nproc)) {
    usage_check(o.batch % (nproc * o.accum) == 0,
          "--nproc " + std::to_string(nproc) + " is more than the work allows: --batch " + std::to_string(o.batch) +
              " must split evenly into nproc × accum = " + std::to_string(nproc * o.accum) + " micro-batches");
    return run_local_ranks(a, nproc);
  }
  o.device = train::rank_device(o.device);
  auto dist = dist::Dist::from_env(o.device);
  o.progress = dist.is_main() && !json;
  std::vector<train::DataSource> data;
  for (const auto& s : data_specs) data.push_back(train::parse_source(s));
  io::check_model_folder(model, io::kModelConfig | io::kModelWeights);
  auto cfg = io::ModelConfig::load(model);
  auto val = train::load_val_batches(val_path, o.seq_len, std::max<int64_t>(1, o.batch / dist.world()),
                                     f.val_windows, cfg.vocab_size);
  auto res = train::train_folder(model, data, val, o, dist);
  if (!dist.is_main()) return 0;
  nlohmann::json j{{"steps", res.steps},     {"tokens", res.tokens},           {"loss", res.last_loss},
                   {"val_loss", res.val_loss}, {"val_ppl", std::exp(res.val_loss)}, {"tokens_per_s", res.tokens_per_s},
                   {"seconds", res.seconds},  {"out", out}, {"peak_rss_bytes", peak_rss_bytes()}};
  if (json) {
    std::cout << j.dump() << "\n";
  } else {
    std::printf("trained %lld steps (%lld tokens, %.0f tokens/s): loss %.4f, validation loss %.4f (ppl %.2f)\n",
                static_cast<long long>(res.steps), static_cast<long long>(res.tokens), res.tokens_per_s, res.last_loss,
                res.val_loss, std::exp(res.val_loss));
    std::printf("model: %s/model  log: %s/train_log.jsonl  plot: %s/loss.svg  peak memory %s\n", out.c_str(), out.c_str(),
                out.c_str(), format_bytes(peak_rss_bytes()).c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
