// mha2mla train: (pre)training or fine-tuning on token shards, on one or several processes.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli/cli.h"
#include "train/recipe.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/text.h"

namespace mha2mla::cli {

const std::vector<std::string> kTrainValueOptions{
    "steps", "batch", "seq-len", "accum", "lr", "min-lr", "warmup", "decay-start", "decay", "weight-decay",
    "clip", "precision", "train", "val-every", "val-windows", "save-every", "seed", "stop-after"};

const char* kTrainOptionsHelp =
    "  --steps N          optimizer steps (default 100)\n"
    "  --batch B          sequences per step over all processes (default 8)\n"
    "  --seq-len T        tokens per sequence (default 256)\n"
    "  --accum A          micro-batches per step and process (default 1)\n"
    "  --lr X             peak learning rate (default 1e-3)\n"
    "  --min-lr X         final learning rate (default 0)\n"
    "  --warmup W         linear warmup steps (default 5% of steps)\n"
    "  --decay-start S    step where the decay begins (default 80% of steps)\n"
    "  --decay D          1-sqrt (default) | cosine | none\n"
    "  --weight-decay X   AdamW weight decay on matrices (default 0.01); betas 0.9/0.95, eps 1e-8\n"
    "  --clip X           gradient-norm clip (default 1.0; 0 = off)\n"
    "  --precision P      f32 (default) | bf16 (bf16 compute, fp32 master weights)\n"
    "  --train S          all (default) | attn (attention and norm parameters only)\n"
    "  --val-every N      validate every N steps (default: steps/10)\n"
    "  --val-windows N    validation windows used (default 64; -1 = all)\n"
    "  --save-every N     checkpoint every N steps (default: steps/5); always at the end\n"
    "  --seed S           data order seed (default 42)\n"
    "  --stop-after N     stop after step N with a checkpoint, as if interrupted (resume with --resume)\n";

void read_train_options(const Args& a, train::TrainOptions& o) {
  o.steps = a.get_int("steps", 100);
  check(o.steps >= 1, "--steps must be at least 1");
  o.batch = a.get_int("batch", 8);
  o.seq_len = a.get_int("seq-len", 256);
  check(o.seq_len >= 1, "--seq-len must be at least 1");
  o.accum = a.get_int("accum", 1);
  o.schedule.lr = a.get_double("lr", 1e-3);
  o.schedule.min_lr = a.get_double("min-lr", 0.0);
  o.schedule.warmup = a.get_int("warmup", o.steps / 20);
  o.schedule.decay_start = a.get_int("decay-start", o.steps * 4 / 5);
  o.schedule.total = o.steps;
  o.schedule.decay = a.get_or("decay", "1-sqrt");
  check(o.schedule.decay == "1-sqrt" || o.schedule.decay == "cosine" || o.schedule.decay == "none",
        "--decay must be 1-sqrt, cosine or none");
  check(o.schedule.lr > 0, "--lr must be positive");
  o.adam.weight_decay = a.get_double("weight-decay", 0.01);
  o.clip = a.get_double("clip", 1.0);
  o.precision = a.get_or("precision", "f32");
  o.train = a.get_or("train", "all");
  o.val_every = a.get_int("val-every", std::max<int64_t>(1, o.steps / 10));
  o.save_every = a.get_int("save-every", std::max<int64_t>(1, o.steps / 5));
  o.seed = static_cast<uint64_t>(a.get_int("seed", 42));
  o.stop_after = a.get_int("stop-after", 0);
}

int cmd_train(const Args& a) {
  if (a.help()) {
    std::printf(
        "usage: mha2mla train --model DIR --data PATH[:WEIGHT]... --val PATH --out DIR [options]\n\n"
        "Trains all (or only attention) parameters of the model in DIR on token shards made by\n"
        "'mha2mla data' (or datatrove .ds files), sampling windows from a weighted mixture of sources.\n"
        "Writes OUT/model (the trained HF folder), OUT/checkpoints/ (atomic, resumable), OUT/train_log.jsonl\n"
        "and OUT/loss.svg.\n\n"
        "  --model DIR        starting model (use 'mha2mla init' for a fresh one)\n"
        "  --data P[:W]...    training shard folders or files, each with an optional mixture weight\n"
        "  --val PATH         validation shards (a folder gives its val.bin)\n"
        "  --out DIR          run folder\n"
        "%s"
        "  --resume           continue the run in OUT from its latest checkpoint\n"
        "  --zero1            shard AdamW state across processes\n"
        "  --nproc N          data-parallel processes on this machine (c10d, Gloo on CPU); across machines,\n"
        "                     start one process per rank with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set\n"
        "  --json             print {steps, tokens, loss, val_loss, val_ppl, tokens_per_s, seconds}\n",
        kTrainOptionsHelp);
    return 0;
  }
  auto vals = kTrainValueOptions;
  for (const char* v : {"model", "data", "val", "out", "nproc"}) vals.push_back(v);
  a.validate(vals, {"resume", "zero1", "json"});
  train::TrainOptions o;
  read_train_options(a, o);
  const std::string model = a.require("model"), out = a.require("out"), val_path = a.require("val");
  auto data_specs = a.get_all("data");
  check(!data_specs.empty(), "train: missing --data");
  o.out = out;
  o.resume = a.flag("resume");
  o.zero1 = a.flag("zero1");
  const int64_t nproc = a.get_int("nproc", 1);
  check(nproc >= 1, "--nproc must be at least 1");
  if (nproc > 1 && !std::getenv("WORLD_SIZE")) {
    check(o.batch % (nproc * o.accum) == 0,
          "--nproc " + std::to_string(nproc) + " is more than the work allows: --batch " + std::to_string(o.batch) +
              " must split evenly into nproc × accum = " + std::to_string(nproc * o.accum) + " micro-batches");
    std::vector<std::string> argv{"mha2mla", "train"};
    for (size_t i = 0; i < a.raw().size(); ++i) {
      if (a.raw()[i] == "--nproc") {
        ++i;  // and its value
        continue;
      }
      if (a.raw()[i].rfind("--nproc=", 0) == 0) continue;
      argv.push_back(a.raw()[i]);
    }
    return train::launch_local(static_cast<int>(nproc), argv);
  }
  auto dist = train::Dist::from_env(torch::kCPU);
  o.progress = dist.is_main() && !a.flag("json");
  std::vector<train::DataSource> data;
  for (const auto& s : data_specs) data.push_back(train::parse_source(s));
  auto cfg = io::ModelConfig::load(model);
  auto val = train::load_val_batches(val_path, o.seq_len, std::max<int64_t>(1, o.batch / dist.world()),
                                     a.get_int("val-windows", 64), cfg.vocab_size);
  auto res = train::train_folder(model, data, val, o, dist);
  if (!dist.is_main()) return 0;
  nlohmann::json j{{"steps", res.steps},     {"tokens", res.tokens},           {"loss", res.last_loss},
                   {"val_loss", res.val_loss}, {"val_ppl", std::exp(res.val_loss)}, {"tokens_per_s", res.tokens_per_s},
                   {"seconds", res.seconds},  {"out", out}, {"peak_rss_bytes", peak_rss_bytes()}};
  if (a.flag("json")) {
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
