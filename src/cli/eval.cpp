// mha2mla eval: multiple-choice benchmarks by log-likelihood and LongBench-style generation tasks.
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>

#include "cli/cli.h"
#include "cli/local_ranks.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "eval/jsonl.h"
#include "eval/longbench.h"
#include "eval/mc_formats.h"
#include "eval/multiple_choice.h"
#include "eval/task_runs.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "dist/distributed.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/progress.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {

using nlohmann::json;

struct EvalArgs {
  std::string dir, task, data, out, predictions;
  int64_t fewshot = 0, limit = 0, batch = 16, max_length = 0, nproc = 1;
  bool json = false;
  model::RuntimeOptions rt;
  dist::Dist dist;  // samples i with i % world == rank are this process's share
};

bool mine(const EvalArgs& a, size_t i) { return static_cast<int>(i % static_cast<size_t>(a.dist.world())) == a.dist.rank(); }

// Sums a host tensor over ranks. Every entry is written by exactly one rank and is zero elsewhere, so the sum
// is the exact value.
void gather_exact(EvalArgs& a, torch::Tensor& t) {
  if (a.dist.world() == 1) return;
  auto dev = t.to(a.rt.device);
  a.dist.allreduce_sum(dev);
  t = dev.to(torch::kCPU);
}

// Every rank's strings (each index set by one rank, empty elsewhere) on every rank.
void gather_strings(EvalArgs& a, std::vector<std::string>& v) {
  if (a.dist.world() == 1) return;
  auto len = torch::zeros({static_cast<int64_t>(v.size())}, torch::kInt64);
  for (size_t i = 0; i < v.size(); ++i) len[static_cast<int64_t>(i)] = static_cast<int64_t>(v[i].size());
  gather_exact(a, len);
  std::vector<int64_t> off(v.size() + 1, 0);
  for (size_t i = 0; i < v.size(); ++i) off[i + 1] = off[i] + len[static_cast<int64_t>(i)].item<int64_t>();
  auto bytes = torch::zeros({std::max<int64_t>(1, off.back())}, torch::kInt32);
  auto ba = bytes.accessor<int32_t, 1>();
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t k = 0; k < v[i].size(); ++k) ba[off[i] + static_cast<int64_t>(k)] = static_cast<unsigned char>(v[i][k]);
  gather_exact(a, bytes);
  ba = bytes.accessor<int32_t, 1>();
  for (size_t i = 0; i < v.size(); ++i) {
    v[i].resize(static_cast<size_t>(off[i + 1] - off[i]));
    for (size_t k = 0; k < v[i].size(); ++k) v[i][k] = static_cast<char>(ba[off[i] + static_cast<int64_t>(k)]);
  }
}

void write_lines(const std::string& path, const std::vector<json>& lines) {
  write_file_atomic(path, [&](std::ostream& f) {
    for (const auto& l : lines) f << l.dump() << "\n";
  });
}

void report(const EvalArgs& a, json out, const std::vector<std::pair<std::string, double>>& text_lines) {
  if (!a.dist.is_main()) return;
  if (a.dist.world() > 1) out["processes"] = a.dist.world();
  out["peak_rss_bytes"] = peak_rss_bytes();  // this process's (rank 0's)
  if (a.json) {
    std::cout << out.dump() << "\n";
    return;
  }
  std::printf("%s: %lld samples\n", a.task.c_str(), static_cast<long long>(out["samples"].get<int64_t>()));
  for (const auto& [name, v] : text_lines) std::printf("  %-28s %.4f\n", name.c_str(), v);
  std::printf("peak memory %s\n", format_bytes(peak_rss_bytes()).c_str());
}

int run_mc(EvalArgs& a) {
  auto rows = eval::read_jsonl(a.data, a.limit);
  std::vector<eval::McSample> samples;
  for (const auto& r : rows)
    samples.push_back(eval::at_row<eval::McSample>(a.data, r, [&](const json& v) { return eval::format_mc_row(a.task, v); }));
  auto tok = tok::Tokenizer::load(a.dir);
  auto m = model::load_model(a.dir, a.rt);
  auto keep = [&](size_t i) { return mine(a, i); };
  auto where = [&](size_t i) { return a.data + ":" + std::to_string(rows[i].line); };
  int64_t own_requests = 0;
  for (size_t i = 0; i < samples.size(); ++i)
    if (mine(a, i)) own_requests += static_cast<int64_t>(samples[i].choices.size());
  Progress bar("eval " + a.task, a.dist.is_main() ? own_requests : 0);
  auto t0 = std::chrono::steady_clock::now();
  auto ll = eval::mc_logliks(*m, tok, samples, a.fewshot, {a.batch, a.max_length}, keep, where,
                             [&](int64_t d, int64_t) {
                               if (a.dist.is_main()) bar.update(d);
                             });
  bar.finish();
  // Every rank's log-likelihoods on every rank: each entry is written by one rank only.
  std::vector<size_t> first(samples.size() + 1, 0);
  for (size_t i = 0; i < samples.size(); ++i) first[i + 1] = first[i] + samples[i].choices.size();
  const size_t total = first.back();
  auto all_ll = torch::zeros({static_cast<int64_t>(total)}, torch::kFloat64);
  for (size_t i = 0; i < samples.size(); ++i)
    for (size_t c = 0; c < ll[i].size(); ++c) all_ll[static_cast<int64_t>(first[i] + c)] = ll[i][c];
  gather_exact(a, all_ll);
  const double* p = all_ll.data_ptr<double>();
  for (size_t i = 0; i < samples.size(); ++i) ll[i].assign(p + first[i], p + first[i + 1]);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  auto mm = eval::mc_metrics(samples, ll);
  std::vector<json> lines;
  for (size_t i = 0; i < samples.size() && !a.out.empty(); ++i) {
    const auto& r = mm.results[i];
    lines.push_back({{"line", rows[i].line}, {"loglik", r.loglik}, {"pred", r.pred}, {"pred_norm", r.pred_norm},
                     {"pred_norm_nospace", r.pred_norm_nospace}, {"gold", samples[i].gold}});
  }
  if (!a.out.empty() && a.dist.is_main()) write_lines(a.out, lines);
  json metrics = json::object();
  std::vector<std::pair<std::string, double>> text;
  for (const auto& [name, ms] : std::vector<std::pair<std::string, eval::MeanStderr>>{
           {"acc", mm.acc}, {"acc_norm", mm.acc_norm}, {"acc_norm_nospace", mm.acc_norm_nospace}}) {
    metrics[name] = ms.mean;
    metrics[name + "_stderr"] = ms.stderr_;
    text.emplace_back(name, ms.mean);
    text.emplace_back(name + "_stderr", ms.stderr_);
  }
  report(a,
         {{"task", a.task}, {"samples", samples.size()}, {"metrics", metrics}, {"requests", total},
          {"fewshot", a.fewshot}, {"seconds", seconds}, {"runtime", runtime_json(a.rt)}},
         text);
  return 0;
}

std::map<std::string, std::string> read_predictions(const std::string& path) {
  std::map<std::string, std::string> preds;
  for (const auto& r : eval::read_jsonl(path)) {
    eval::at_row<int>(path, r, [&](const json& v) {
      check(v.is_object() && v.contains("_id") && v["_id"].is_string(), "missing field \"_id\"");
      check(v.contains("pred") && v["pred"].is_string(), "missing field \"pred\" (a string)");
      check(preds.emplace(v["_id"].get<std::string>(), v["pred"].get<std::string>()).second,
            "_id \"" + v["_id"].get<std::string>() + "\" appears twice");
      return 0;
    });
  }
  return preds;
}

int run_longbench(EvalArgs& a) {
  auto raw = eval::read_jsonl(a.data, a.limit);
  std::vector<eval::LongBenchRow> rows;
  std::set<std::string> ids;
  for (const auto& r : raw) {
    rows.push_back(eval::at_row<eval::LongBenchRow>(a.data, r, [&](const json& v) {
      auto row = eval::parse_longbench_row(v);
      eval::longbench_dataset(row.dataset);
      check(ids.insert(row.id).second, "_id \"" + row.id + "\" appears twice");
      return row;
    }));
  }
  std::vector<std::string> preds(rows.size());
  double seconds = 0.0;
  int64_t truncated = 0;
  if (!a.predictions.empty()) {
    auto given = read_predictions(a.predictions);
    for (size_t i = 0; i < rows.size(); ++i) {
      auto it = given.find(rows[i].id);
      check(it != given.end(), a.predictions + ": no prediction for _id \"" + rows[i].id + "\" (" + a.data + ":" +
                                   std::to_string(raw[i].line) + ")");
      preds[i] = it->second;
    }
  } else {
    auto tok = tok::Tokenizer::load(a.dir);
    auto m = model::load_model(a.dir, a.rt);
    int64_t own = 0;
    for (size_t i = 0; i < rows.size(); ++i) own += mine(a, i);
    Progress bar("eval longbench", a.dist.is_main() ? own : 0);
    auto t0 = std::chrono::steady_clock::now();
    preds = eval::longbench_predictions(
        *m, tok, rows, a.batch, a.max_length, [&](size_t i) { return mine(a, i); },
        [&](size_t i) { return a.data + ":" + std::to_string(raw[i].line); },
        [&](int64_t d, int64_t) {
          if (a.dist.is_main()) bar.update(d);
        },
        &truncated);
    bar.finish();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gather_strings(a, preds);
    auto tr = torch::full({1}, truncated, torch::kInt64);
    gather_exact(a, tr);
    truncated = tr.item<int64_t>();
  }

  auto sc = eval::score_longbench(rows, preds, [&](size_t i) { return a.data + ":" + std::to_string(raw[i].line); });
  const auto& sum = sc.summary;
  std::vector<json> lines;
  for (size_t i = 0; i < rows.size() && !a.out.empty(); ++i)
    lines.push_back({{"_id", rows[i].id}, {"dataset", rows[i].dataset}, {"pred", preds[i]}, {"answers", rows[i].answers},
                     {"score", sc.scores[i]}, {"length", rows[i].length}});
  if (!a.out.empty() && a.dist.is_main()) write_lines(a.out, lines);
  const auto& ms = sc.score;
  auto summary = sum.to_json();
  json metrics{{"average", summary["average"]}, {"score", ms.mean}, {"score_stderr", ms.stderr_}};
  std::vector<std::pair<std::string, double>> text{{"average over datasets", sum.average()},
                                                   {"score (all samples)", ms.mean},
                                                   {"score_stderr", ms.stderr_}};
  for (const auto& [name, d] : summary["datasets"].items()) {
    text.emplace_back(name, d["score"].get<double>());
    if (d.contains("buckets"))
      for (const auto& [b, v] : d["buckets"].items()) text.emplace_back("  " + name + " " + b, v["score"].get<double>());
  }
  json out{{"task", a.task}, {"samples", rows.size()}, {"metrics", metrics}, {"datasets", summary["datasets"]}};
  if (a.predictions.empty()) {
    out["seconds"] = seconds;
    out["truncated"] = truncated;
    out["runtime"] = runtime_json(a.rt);
  }
  report(a, out, text);
  return 0;
}

}  // namespace

int cmd_eval(const Args& args) {
  EvalArgs a;
  std::string tasks;
  for (const auto& n : eval::mc_task_names()) tasks += n + ", ";
  tasks += "longbench";
  OptionTable t("eval", "--model DIR --task NAME --data FILE.jsonl [options]",
                "Scores a model on a task given as JSON Lines.\n"
                "Multiple choice (" + tasks.substr(0, tasks.size() - 11) + "): every choice is scored by the summed\n"
                "log-probability of its tokens after the query; acc uses the raw sum, acc_norm divides it by the\n"
                "choice's characters, acc_norm_nospace by its characters without a leading space.\n"
                "longbench: greedy generation with LongBench's per-dataset prompt and length, scored with its\n"
                "metrics (x100): per dataset, their average, and LongBench-E's 0-4k / 4-8k / 8k+ buckets.");
  t.text("model", "DIR", "model folder (config.json, safetensors, tokenizer.json); not needed with --predictions",
         a.dir)
      .required("task", "NAME", tasks, [&](auto& v) {
        check(eval::is_mc_task(v) || v == "longbench", "--task: unknown task \"" + v + "\" (known: " + tasks + ")");
        a.task = v;
      })
      .required("data", "FILE", "JSON Lines, one sample per line, in the task's schema (see docs/evaluation.md)",
                [&](auto& v) { a.data = v; })
      .integer("fewshot", "K", "multiple choice: K solved samples from the same file before each query", a.fewshot, 0)
      .integer("limit", "N", "only the first N samples (0 = all)", a.limit, 0)
      .integer("batch", "B", "rows per forward pass (choices, or prompts when generating)", a.batch, 1)
      .integer("max-length", "N",
               "tokens per input: multiple choice keeps the last N; longbench keeps the first and last N/2\n"
               "(and always leaves room for the generated tokens)",
               a.max_length, 0, "max_position_embeddings")
      .text("predictions", "FILE",
            "longbench: score these predictions ({\"_id\", \"pred\"} per line) instead of generating", a.predictions)
      .text("out", "FILE",
            "one JSON line per sample (multiple choice: loglik per choice and pred; longbench: pred,\n"
            "answers and score), written atomically",
            a.out);
  t.integer("nproc", "N",
            "processes on this machine, each scoring every N-th sample (c10d, as train --nproc; across\n"
            "machines set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT instead); totals are exact",
            a.nproc, 1);
  add_runtime_options(t, a.rt, kAllRuntime);
  t.toggle("json", "one JSON object: {task, samples, metrics: {NAME, NAME_stderr, ...}, ...; longbench adds\ndatasets}",
           a.json);
  if (!t.parse(args)) return 0;
  usage_check(a.predictions.empty() || a.task == "longbench", "--predictions applies to --task longbench only");
  usage_check(a.predictions.empty() || a.nproc == 1, "--predictions needs no --nproc (nothing is generated)");
  usage_check(!a.dir.empty() || !a.predictions.empty(), "missing --model (see mha2mla eval --help)");
  if (a.predictions.empty()) io::check_model_folder(a.dir, io::kModelAll);
  if (starts_local_ranks(a.nproc)) return run_local_ranks(args, a.nproc);
  if (a.predictions.empty()) a.dist = dist::Dist::from_env(a.rt.device);
  return a.task == "longbench" ? run_longbench(a) : run_mc(a);
}

}  // namespace mha2mla::cli
