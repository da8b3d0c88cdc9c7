// mha2mla finetune: the recovery recipe for a converted model, beside the fair baseline (the original
// model fine-tuned on the same tokens with the same schedule).
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "io/model_folder.h"
#include "train/recipe.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/text.h"

namespace mha2mla::cli {

int cmd_finetune(const Args& a) {
  train::TrainOptions o;
  TrainFlags f;
  std::string orig, mla, out, val_path;
  std::vector<std::string> specs;
  bool json = false, skip_baseline = false;
  double distill = 0;
  OptionTable t("finetune", "--model ORIG --mla CONVERTED --data PATH[:WEIGHT]... --val PATH --out DIR [options]",
                "Fine-tunes the converted model and, on the same tokens with the same schedule, the original model\n"
                "(the fair baseline), then reports held-out perplexity for: the original, the original fine-tuned,\n"
                "the converted model before training and after. The schedule has the reference's shape, scaled to\n"
                "--steps: warmup 10%, constant, then 1-sqrt decay to 0 over the last 1/6; AdamW 0.9/0.95, clip 1.\n"
                "Runs go to OUT/baseline and OUT/mla (each with model/, checkpoints, log and loss.svg).");
  t.required("model", "ORIG", "the original model", [&](auto& v) { orig = v; })
      .required("mla", "CONVERTED", "its conversion by 'mha2mla convert'", [&](auto& v) { mla = v; })
      .multi("data", "P[:W]...", "training shards", [&](auto& v) { specs = v; }, true)
      .required("val", "PATH", "held-out shards", [&](auto& v) { val_path = v; })
      .required("out", "DIR", "output folder", [&](auto& v) { out = v; })
      .toggle("skip-baseline", "train only the converted model", skip_baseline)
      .number("distill", "W",
              "add W · KL(original ‖ converted) of the next-token distributions to the converted model's loss\n"
              "(distillation from the frozen original, as X-EcoMLA does; the baseline trains on CE alone)",
              distill);
  add_train_options(t, o, f, /*finetune=*/true);
  t.toggle("json", "print the report as one JSON object", json);
  if (!t.parse(a)) return 0;
  finish_train_options(o, f);
  usage_check(distill >= 0 && std::isfinite(distill), "--distill must be a non-negative number");
  o.device = train::rank_device(o.device);
  for (const auto& d : {orig, mla}) io::check_model_folder(d, io::kModelConfig | io::kModelWeights);
  auto ocfg = io::ModelConfig::load(orig);
  auto mcfg = io::ModelConfig::load(mla);
  check(!ocfg.is_mla, orig + " is already an MLA model: --model takes the original");
  check(mcfg.is_mla, mla + " is not a converted model (no \"mha2mla\" section): run 'mha2mla convert' first");
  check(ocfg.vocab_size == mcfg.vocab_size && ocfg.num_layers == mcfg.num_layers && ocfg.hidden_size == mcfg.hidden_size,
        mla + " was not converted from " + orig + " (shapes differ)");
  std::vector<train::DataSource> data;
  for (const auto& s : specs) data.push_back(train::parse_source(s));
  dist::Dist dist;
  auto val = train::load_val_batches(val_path, o.seq_len, o.batch, f.val_windows, ocfg.vocab_size);
  auto say = [&](const char* what) {
    if (!json) std::fprintf(stderr, "finetune: %s\n", what);
  };
  o.progress = !json;
  say("evaluating the original and the converted model");
  const double l_orig = train::folder_val_loss(orig, val, dist, o.precision, o.device);
  const double l_mla0 = train::folder_val_loss(mla, val, dist, o.precision, o.device);
  double l_base = -1;
  train::TrainResult rb;
  if (!skip_baseline) {
    say("fine-tuning the original (baseline)");
    auto ob = o;
    ob.out = out + "/baseline";
    rb = train::train_folder(orig, data, val, ob, dist);
    l_base = rb.val_loss;
  }
  say("fine-tuning the converted model");
  auto om = o;
  om.out = out + "/mla";
  if (distill > 0) {
    om.teacher = model::load_model(orig, torch::kFloat32, o.device).ptr();
    om.distill = distill;
  }
  auto rm = train::train_folder(mla, data, val, om, dist);
  const double l_mla1 = rm.val_loss;

  nlohmann::json rep{{"original", {{"val_loss", l_orig}, {"val_ppl", std::exp(l_orig)}}},
                     {"converted_before", {{"val_loss", l_mla0}, {"val_ppl", std::exp(l_mla0)}}},
                     {"converted_after", {{"val_loss", l_mla1}, {"val_ppl", std::exp(l_mla1)}, {"model", out + "/mla/model"}}},
                     {"steps", o.steps},
                     {"distill", distill},
                     {"tokens", rm.tokens},
                     {"val_tokens", [&] {
                        int64_t n = 0;
                        for (const auto& b : val) n += b.size(0) * (b.size(1) - 1);
                        return n;
                      }()}};
  if (l_base >= 0)
    rep["original_finetuned"] = {{"val_loss", l_base}, {"val_ppl", std::exp(l_base)}, {"model", out + "/baseline/model"}};
  rep["peak_rss_bytes"] = peak_rss_bytes();
  if (json) {
    std::cout << rep.dump() << "\n";
    return 0;
  }
  std::printf("held-out perplexity (%lld tokens; fine-tuning on %lld tokens)\n",
              static_cast<long long>(rep["val_tokens"].get<int64_t>()), static_cast<long long>(rm.tokens));
  std::printf("  original                     %10.3f\n", std::exp(l_orig));
  if (l_base >= 0) std::printf("  original, fine-tuned         %10.3f\n", std::exp(l_base));
  std::printf("  converted, before training   %10.3f\n", std::exp(l_mla0));
  std::printf("  converted, after training    %10.3f\n", std::exp(l_mla1));
  std::printf("peak memory %s\n", format_bytes(peak_rss_bytes()).c_str());
  return 0;
}

}  // namespace mha2mla::cli
