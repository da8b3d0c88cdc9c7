// mha2mla reproduce: the paper's ablations at small scale with one command. Calibrates the model once, then
// for every variant converts it, fine-tunes it on the same tokens as the fair baseline, and measures held-out
// perplexity before and after, kjv-mc and kjv-retrieval; int4 rows re-measure a variant through a quantized
// cache. Each finished row is kept in OUT/rows/ID.json, so an interrupted run resumes where it stopped.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "io/model_folder.h"
#include "convert/calibrate.h"
#include "convert/mla_convert.h"
#include "eval/ablation_report.h"
#include "eval/jsonl.h"
#include "eval/longbench.h"
#include "eval/mc_formats.h"
#include "eval/perplexity.h"
#include "eval/task_runs.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "train/recipe.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_read.h"
#include "util/memory.h"
#include "util/progress.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Variant {
  std::string id, label, group;
  bool convert = false, finetune = true;
  convert::ConvertOptions co;
  double distill = 0;
  std::string source;  // int4 rows: the row whose models they measure again
};

struct Setup {
  std::string model, out, data, val, calib_text, val_text, mc_path, retrieval_path;
  int64_t rope_dims = 8, calib_samples = 64, ctx = 512, stride = 256, limit = 0, val_tokens = 0;
  double distill = 1.0;
  std::vector<std::string> only;
  train::TrainOptions o;
  bool json = false;
};

std::string reduction_name(double red) {
  char b[32];
  std::snprintf(b, sizeof(b), "%g", 100.0 * red);
  return b;
}

// d_kv (per KV head) that gives cache reduction `red` with r rotated dims: the latent takes what the
// rotated keys leave of (1 − red) · 2 · n_kv · d_h values; split SVD holds two latents of d_kv each.
int64_t dkv_for(const io::ModelConfig& c, int64_t r, double red, bool split) {
  const double after = (1.0 - red) * 2.0 * static_cast<double>(c.num_kv_heads * c.head_dim);
  const double latent = after - static_cast<double>(c.num_kv_heads * r);
  const double dkv = latent / static_cast<double>(c.num_kv_heads * (split ? 2 : 1));
  check(dkv >= 1 && std::abs(dkv - std::round(dkv)) < 1e-9,
        "a cache reduction of " + reduction_name(red) + " % is not reachable with --rope-dims " + std::to_string(r) +
            " on this model (d_kv would be " + std::to_string(dkv) + ")");
  return static_cast<int64_t>(std::round(dkv));
}

// One row: a conversion (unless co.svd is empty: the original model), fine-tuned or not.
Variant make(std::string id, std::string label, std::string group, bool finetune, convert::ConvertOptions co = {},
             double distill = 0, std::string source = "") {
  Variant v;
  v.id = std::move(id);
  v.label = std::move(label);
  v.group = std::move(group);
  v.convert = !co.svd.empty();
  v.finetune = finetune;
  v.co = std::move(co);
  v.distill = distill;
  v.source = std::move(source);
  return v;
}

std::vector<Variant> variants(const Setup& s, const io::ModelConfig& c) {
  convert::ConvertOptions none;
  none.svd.clear();
  std::vector<Variant> v;
  v.push_back(make("original", "original", "original", false, none));
  v.push_back(make("baseline", "original, fine-tuned (fair baseline)", "baseline", true, none));
  auto conv = [&](const std::string& rope, const std::string& svd, int64_t dkv) {
    convert::ConvertOptions co;
    co.rope = convert::parse_rope_strategy(rope);
    co.rope_dims = s.rope_dims;
    co.svd = svd;
    co.dkv = dkv;
    return co;
  };
  const std::string r = "r = " + std::to_string(s.rope_dims);
  for (const char* rope : {"high", "low", "uniform", "2-norm"})
    v.push_back(make(std::string("rope-") + rope, std::string("partial RoPE ") + rope + ", " + r + ", no SVD", "rope",
                     true, conv(rope, "none", 0)));
  for (double red : {0.6875, 0.8125, 0.875}) {
    const int64_t d = dkv_for(c, s.rope_dims, red, false);
    v.push_back(make("ladder-" + reduction_name(red), "2-norm, joint SVD, d_kv = " + std::to_string(d), "ladder", true,
                     conv("2-norm", "joint", d)));
  }
  const int64_t d_split = dkv_for(c, s.rope_dims, 0.8125, true);
  v.push_back(make("svd-split", "2-norm, split SVD, d_kv = " + std::to_string(d_split) + " each", "svd", true,
                   conv("2-norm", "split", d_split)));
  const int64_t d81 = dkv_for(c, s.rope_dims, 0.8125, false);
  v.push_back(make("svd-activation", "2-norm, activation-aware SVD, d_kv = " + std::to_string(d81), "svd", true,
                   conv("2-norm", "activation", d81)));
  char w[32];
  std::snprintf(w, sizeof(w), "%g", s.distill);
  v.push_back(make("distill", "2-norm, joint SVD, d_kv = " + std::to_string(d81) + ", distilled (KL weight " + w + ")",
                   "distill", true, conv("2-norm", "joint", d81), s.distill));
  v.push_back(make("distill-activation", "2-norm, activation-aware SVD, d_kv = " + std::to_string(d81) + ", distilled",
                   "distill", true, conv("2-norm", "activation", d81), s.distill));
  for (const char* src : {"baseline", "ladder-68.75", "ladder-81.25", "ladder-87.5"}) {
    std::string label;
    for (const auto& x : v)
      if (x.id == src) label = x.label + ", int4 cache";
    v.push_back(make(std::string(src) + "-int4", label, "int4", false, none, 0, src));
  }
  if (!s.only.empty()) {
    std::vector<Variant> keep;
    for (const auto& x : v) {
      bool want = std::find(s.only.begin(), s.only.end(), x.id) != s.only.end();
      // The rows an int4 row re-measures come along.
      for (const auto& y : v)
        if (!y.source.empty() && y.source == x.id && std::find(s.only.begin(), s.only.end(), y.id) != s.only.end())
          want = true;
      if (want) keep.push_back(x);
    }
    for (const auto& id : s.only)
      check(std::any_of(v.begin(), v.end(), [&](const Variant& x) { return x.id == id; }),
            "--only: unknown row \"" + id + "\"");
    v = keep;
  }
  return v;
}

// What a stored row depends on: a stored row made with other settings is measured again.
json settings_of(const Setup& s, const Variant& v) {
  json j{{"model", fs::absolute(s.model).lexically_normal().string()},
         {"steps", s.o.steps},
         {"batch", s.o.batch},
         {"seq_len", s.o.seq_len},
         {"lr", s.o.schedule.lr},
         {"seed", s.o.seed},
         {"precision", s.o.precision},
         {"train", s.o.train},
         {"ctx", s.ctx},
         {"stride", s.stride},
         {"limit", s.limit},
         {"val_tokens", s.val_tokens},
         {"calib_samples", s.calib_samples},
         {"distill", v.distill}};
  if (v.convert)
    j["convert"] = {{"rope", convert::rope_strategy_name(v.co.rope)},
                    {"rope_dims", v.co.rope_dims},
                    {"svd", v.co.svd},
                    {"dkv", v.co.dkv}};
  return j;
}

class Runner {
 public:
  explicit Runner(Setup s)
      : s_(std::move(s)),
        cfg_(io::ModelConfig::load(s_.model)),
        shape_{cfg_.hidden_size, cfg_.num_heads, cfg_.num_kv_heads, cfg_.head_dim},
        tok_(tok::Tokenizer::load(s_.model)) {
    val_ids_ = tok::encode_text_file(tok_, s_.val_text);
    if (s_.val_tokens > 0 && static_cast<int64_t>(val_ids_.size()) > s_.val_tokens) val_ids_.resize(static_cast<size_t>(s_.val_tokens));
    for (const auto& r : eval::read_jsonl(s_.mc_path, s_.limit))
      mc_.push_back(eval::at_row<eval::McSample>(s_.mc_path, r, [&](const json& v) { return eval::format_mc_row("mc", v); }));
    for (const auto& r : eval::read_jsonl(s_.retrieval_path, s_.limit))
      retrieval_.push_back(eval::at_row<eval::LongBenchRow>(s_.retrieval_path, r, [&](const json& v) {
        auto row = eval::parse_longbench_row(v);
        eval::longbench_dataset(row.dataset);
        return row;
      }));
    train_data_.push_back(train::parse_source(s_.data));
    ft_val_ = train::load_val_batches(s_.val, s_.o.seq_len, s_.o.batch, 8, cfg_.vocab_size);
  }

  std::vector<eval::AblationRow> run(const std::vector<Variant>& vs) {
    std::vector<eval::AblationRow> rows;
    for (size_t i = 0; i < vs.size(); ++i) {
      const auto& v = vs[i];
      const auto row_file = (fs::path(s_.out) / "rows" / (v.id + ".json")).string();
      const json settings = settings_of(s_, v);
      if (fs::exists(row_file)) {
        try {
          auto j = read_json_file(row_file);  // depth-limited, as every JSON read
          if (j.value("settings", json()) == settings) {
            say(i, vs.size(), v.id, "kept from an earlier run (" + row_file + ")");
            rows.push_back(eval::AblationRow::from_json(j));
            continue;
          }
        } catch (const std::exception&) {
          // unreadable or from other settings: measured again below
        }
      }
      auto t0 = std::chrono::steady_clock::now();
      auto row = run_one(v, i, vs.size());
      row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      auto j = row.to_json();
      j["settings"] = settings;
      write_text_atomic(row_file, j.dump(2) + "\n");
      rows.push_back(row);
    }
    return rows;
  }

 private:
  void say(size_t i, size_t n, const std::string& id, const std::string& what) const {
    std::fprintf(stderr, "reproduce [%zu/%zu] %s: %s\n", i + 1, n, id.c_str(), what.c_str());
  }

  std::string calib() {
    const auto path = (fs::path(s_.out) / "calib.safetensors").string();
    auto ids = tok::encode_text_file(tok_, s_.calib_text);
    // An earlier file is kept only if it used the windows this run would: as many as asked, or the text allows.
    const int64_t windows = std::min<int64_t>(s_.calib_samples, static_cast<int64_t>(ids.size()) / s_.ctx);
    if (fs::exists(path)) {
      try {
        auto c = convert::load_calib(path);
        convert::check_calib_matches(c, s_.model, path);
        if (c.samples == windows && c.ctx == s_.ctx) return path;
      } catch (const Error&) {
      }
    }
    std::fprintf(stderr, "reproduce: calibrating on %s\n", s_.calib_text.c_str());
    auto m = model::load_model(s_.model, torch::kFloat32, s_.o.device);
    Progress bar("calibrate", windows);
    auto st = convert::calibrate(*m, ids, s_.calib_samples, s_.ctx, [&](int64_t d, int64_t) { bar.update(d); });
    bar.finish();
    st.fingerprint = convert::model_fingerprint(s_.model);
    convert::save_calib(path, st);
    return path;
  }

  double ppl(const std::string& dir, bool int4) const {
    model::RuntimeOptions rt;
    rt.device = s_.o.device;
    eval::PplOptions po{s_.ctx, s_.stride, 0};
    if (int4) {
      rt.cache.type = model::CacheType::Int4;  // residual 128, groups of 64: the paper's setting
      po.chunk = 64;
    }
    auto m = model::load_model(dir, rt);
    return eval::perplexity(*m, val_ids_, po).ppl;
  }

  void tasks(const std::string& dir, bool int4, eval::AblationRow& row) const {
    model::RuntimeOptions rt;
    rt.device = s_.o.device;
    if (int4) rt.cache.type = model::CacheType::Int4;
    auto m = model::load_model(dir, rt);
    if (!int4) {  // a log-likelihood forward reads no cache: int4 would change nothing
      auto ll = eval::mc_logliks(*m, tok_, mc_, 0, {16, 0});
      auto mm = eval::mc_metrics(mc_, ll);
      row.mc = mm.acc_norm_nospace.mean;
      row.mc_stderr = mm.acc_norm_nospace.stderr_;
    }
    auto preds = eval::longbench_predictions(*m, tok_, retrieval_, 8, 0);
    auto sc = eval::score_longbench(retrieval_, preds);
    row.retrieval = sc.score.mean;
    row.retrieval_stderr = sc.score.stderr_;
  }

  eval::AblationRow run_one(const Variant& v, size_t i, size_t n) {
    eval::AblationRow row{v.id, v.label, v.group};
    const fs::path work = fs::path(s_.out) / "models" / (v.source.empty() ? v.id : v.source);
    std::string before = s_.model, after = s_.model;
    auto cache_ratio = [&](const Variant& x) {
      if (!x.convert) return 1.0;
      const auto [b, a] = convert::kv_values_per_token(shape_, x.co);
      return static_cast<double>(a) / static_cast<double>(b);
    };
    double ratio = cache_ratio(v);
    if (!v.source.empty()) {  // int4: the source row's models, through a quantized cache
      for (const auto& x : variants_) {
        if (x.id != v.source) continue;
        ratio = cache_ratio(x);
        if (x.convert) before = (work / "converted").string();
      }
      after = (work / "finetuned" / "model").string();
      check(fs::exists(after), "reproduce: " + v.id + " needs the fine-tuned model of " + v.source + " (" + after + ")");
      // 4 bits per value plus an f16 scale and zero point per group of 64, against 16-bit values.
      ratio *= (4.0 + 32.0 / 64.0) / 16.0;
    }
    row.kv_reduction = 1.0 - ratio;
    const bool int4 = v.group == "int4";
    if (v.source.empty()) fs::remove_all(work);  // what an earlier run with other settings left
    if (v.convert) {
      say(i, n, v.id, "converting");
      before = (work / "converted").string();
      convert::validate_options(shape_, v.co);
      convert::convert_model(s_.model, before, v.co, calib_path_);
    }
    if (v.finetune) {
      say(i, n, v.id, "fine-tuning " + std::to_string(s_.o.steps) + " steps");
      auto o = s_.o;
      o.out = (work / "finetuned").string();
      if (v.distill > 0) {
        o.teacher = model::load_model(s_.model, torch::kFloat32, o.device).ptr();
        o.distill = v.distill;
      }
      dist::Dist dist;
      train::train_folder(before, train_data_, ft_val_, o, dist);
      fs::remove_all(fs::path(o.out) / "checkpoints");  // the model is kept; the resumable state is not needed
      after = (work / "finetuned" / "model").string();
    }
    say(i, n, v.id, "measuring");
    row.ppl_before = ppl(before, int4);
    row.ppl_after = after == before ? row.ppl_before : ppl(after, int4);
    tasks(after, int4, row);
    char b[160];
    std::snprintf(b, sizeof(b), "ppl %.2f -> %.2f, kjv_mc %.1f, retrieval %.1f", row.ppl_before, row.ppl_after,
                  row.mc >= 0 ? 100 * row.mc : -1.0, row.retrieval);
    say(i, n, v.id, b);
    return row;
  }

 public:
  std::vector<Variant> variants_;
  std::string calib_path_;
  std::string prepare() { return calib_path_ = calib(); }

 private:
  Setup s_;
  io::ModelConfig cfg_;
  convert::LayerShape shape_;
  tok::Tokenizer tok_;
  std::vector<int64_t> val_ids_;
  std::vector<eval::McSample> mc_;
  std::vector<eval::LongBenchRow> retrieval_;
  std::vector<train::DataSource> train_data_;
  std::vector<torch::Tensor> ft_val_;
};

}  // namespace

int cmd_reproduce(const Args& a) {
  Setup s;
  TrainFlags f;
  s.data = "data/kjv/tok";
  s.val = "data/kjv/tok";
  s.calib_text = "data/kjv/train.txt";
  s.val_text = "data/kjv/val.txt";
  s.mc_path = "tasks/kjv/kjv_mc.jsonl";
  s.retrieval_path = "tasks/kjv/kjv_retrieval_512.jsonl";
  s.o.steps = 200;
  s.o.batch = 8;
  s.o.seq_len = 512;
  s.o.precision = "bf16";
  f.lr = 5e-4;
  OptionTable t("reproduce", "--model DIR --out DIR [options]",
                "Runs the paper's ablations on one model with the shipped data and tasks: the original and the fair\n"
                "baseline (the original fine-tuned on the same tokens); partial RoPE alone (no SVD) with high, low,\n"
                "uniform and 2-norm frequencies; joint, split and activation-aware SVD at -81.25 %; the d_kv ladder\n"
                "at -68.75, -81.25 and -87.5 % (2-norm, joint); an int4 cache (residual 128) on the baseline and each\n"
                "ladder point; and fine-tuning with distillation from the original. Every row gives the KV cache\n"
                "reduction, held-out ppl before and after fine-tuning, kjv-mc acc_norm_nospace and kjv-retrieval,\n"
                "with standard errors. Writes OUT/reproduce.json, OUT/reproduce.md and OUT/reproduce.svg; finished\n"
                "rows are kept in OUT/rows/, so a run that stops resumes where it left off.");
  t.required("model", "DIR", "the original (unconverted) model", [&](auto& v) { s.model = v; })
      .required("out", "DIR", "output folder", [&](auto& v) { s.out = v; })
      .text("data", "PATH", "training token shards (mha2mla data)", s.data)
      .text("val", "PATH", "held-out shards for the fine-tuning runs' own validation", s.val)
      .text("calib-text", "FILE", "calibration text", s.calib_text)
      .text("val-text", "FILE", "held-out text for perplexity", s.val_text)
      .integer("val-tokens", "N", "use only the first N held-out tokens (0 = all)", s.val_tokens, 0)
      .integer("ctx", "T", "perplexity window and calibration window length", s.ctx, 2)
      .integer("stride", "S", "perplexity window stride", s.stride, 1)
      .text("mc", "FILE", "multiple-choice task (mc rows)", s.mc_path)
      .text("retrieval", "FILE", "retrieval task (LongBench rows)", s.retrieval_path)
      .integer("limit", "N", "use only the first N samples of each task (0 = all)", s.limit, 0)
      .integer("rope-dims", "R", "rotated dims kept per head", s.rope_dims, 2)
      .integer("calib-samples", "N", "calibration windows", s.calib_samples, 1)
      .number("distill", "W", "KL weight of the distillation row", s.distill)
      .multi("only", "ID...", "run only these rows (ids as in OUT/rows; an int4 row brings its source)",
             [&](auto& v) { s.only = v; });
  add_train_options(t, s.o, f, /*finetune=*/true);
  t.toggle("json", "print the report as one JSON object", s.json);
  if (!t.parse(a)) return 0;
  finish_train_options(s.o, f);
  s.o.val_every = s.o.steps;  // the rows are measured afterwards; the runs validate only at the end
  s.o.save_every = s.o.steps;
  s.o.progress = true;
  s.o.device = train::rank_device(s.o.device);
  io::check_model_folder(s.model, io::kModelAll);
  auto cfg = io::ModelConfig::load(s.model);
  check(!cfg.is_mla, s.model + " is already an MLA model: --model takes the original");
  usage_check(s.distill > 0 && std::isfinite(s.distill), "--distill must be positive");

  auto vs = variants(s, cfg);
  fs::create_directories(fs::path(s.out) / "rows");
  Runner r(s);
  r.variants_ = vs;
  r.prepare();
  auto rows = r.run(vs);

  const std::string title = "MHA2MLA ablations on " + fs::path(s.model).lexically_normal().filename().string() +
                            " (" + std::to_string(s.o.steps) + " fine-tuning steps)";
  json rep{{"model", s.model}, {"steps", s.o.steps}, {"rows", json::array()}, {"orderings", json::array()}};
  for (const auto& row : rows) rep["rows"].push_back(row.to_json());
  for (const auto& o : eval::check_orderings(rows))
    rep["orderings"].push_back({{"claim", o.claim}, {"measured", o.measured}, {"holds", o.holds}, {"evidence", o.evidence}});
  rep["peak_rss_bytes"] = peak_rss_bytes();
  const auto md = eval::ablation_markdown(rows, title);
  write_text_atomic((fs::path(s.out) / "reproduce.json").string(), rep.dump(2) + "\n");
  write_text_atomic((fs::path(s.out) / "reproduce.md").string(), md);
  write_text_atomic((fs::path(s.out) / "reproduce.svg").string(), eval::ablation_svg(rows, title));
  if (s.json)
    std::cout << rep.dump() << "\n";
  else
    std::cout << md << "peak memory " << format_bytes(peak_rss_bytes()) << "\n";
  return 0;
}

}  // namespace mha2mla::cli
