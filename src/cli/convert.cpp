// mha2mla convert: MHA/GQA checkpoint -> MLA checkpoint (partial RoPE + low-rank latent).
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "convert/mla_convert.h"
#include "util/error.h"
#include "util/progress.h"

namespace mha2mla::cli {

int cmd_convert(const Args& a) {
  if (a.help()) {
    std::puts(
        "usage: mha2mla convert --model DIR --out DIR --rope high|low|uniform|2-norm --rope-dims R\n"
        "                       --dkv D --svd joint|split|activation|none [--calib FILE] [--dtype f32|bf16]\n"
        "                       [--uniform-start S] [--score product|sum] [--svd-algo auto|exact|randomized] [--json]\n\n"
        "Converts a Llama-family model (llama, mistral, qwen2) to Multi-head Latent Attention.\n"
        "Each head keeps RoPE on R dims (R/2 frequency pairs); the other key dims and the values are\n"
        "compressed into one latent of D·n_kv values per token (2·D·n_kv for split).\n\n"
        "  --model DIR        source model folder (HF layout)\n"
        "  --out DIR          output folder (must not exist or be empty; nothing is left on failure)\n"
        "  --rope S           high | low | uniform | 2-norm (2-norm needs --calib)\n"
        "  --rope-dims R      rotated dims kept per head, even, <= head_dim\n"
        "  --dkv D            latent rank per KV head (not needed with --svd none)\n"
        "  --svd M            joint: one SVD of [W_k nope; W_v]; split: one each (latent 2·D·n_kv);\n"
        "                     activation: joint, weighted by the calibration inputs' covariance;\n"
        "                     none: partial RoPE only, full-rank K/V\n"
        "  --calib FILE       from 'mha2mla calibrate' (2-norm scores, covariances, held-out error)\n"
        "  --dtype T          output dtype f32 | bf16 (default: as the source)\n"
        "  --uniform-start S  first frequency for --rope uniform (default 0; step = head_dim/R)\n"
        "  --score RULE       2-norm score: product (default) or sum (paper-era)\n"
        "  --svd-algo A       auto (randomized for large matrices), exact, randomized\n"
        "  --json             the report as one JSON object\n\n"
        "Report keys (--json): kv_values_per_token_per_layer_before/_after, kv_cache_ratio, kv_cache_reduction,\n"
        "latent_dim, layers[{layer, k_rel_err, v_rel_err, k_rel_err_heldout, v_rel_err_heldout,\n"
        "k_rel_err_heldout_plain_svd, v_rel_err_heldout_plain_svd}], mean_k_rel_err, mean_v_rel_err,\n"
        "kept_frequencies{slots, same_for_all_heads, frequencies, count_per_frequency, most_kept}.");
    return 0;
  }
  a.validate({"model", "out", "rope", "rope-dims", "dkv", "svd", "calib", "dtype", "uniform-start", "score", "svd-algo"},
             {"json"});
  convert::ConvertOptions opt;
  const std::string model = a.require("model"), out = a.require("out");
  opt.rope = convert::parse_rope_strategy(a.require("rope"));
  opt.rope_dims = a.get_int("rope-dims", 0);
  check(a.get("rope-dims").has_value(), "convert: missing --rope-dims");
  opt.svd = a.require("svd");
  opt.dkv = a.get_int("dkv", 0);
  if (opt.svd != "none") check(a.get("dkv").has_value(), "convert: missing --dkv");
  opt.uniform_start = a.get_int("uniform-start", 0);
  std::string score = a.get_or("score", "product");
  check(score == "product" || score == "sum", "--score must be product or sum");
  opt.score_sum = score == "sum";
  opt.algo = convert::parse_svd_algo(a.get_or("svd-algo", "auto"));
  opt.out_dtype = a.get_or("dtype", "");
  Progress bar("convert", 1);
  std::unique_ptr<Progress> layers_bar;
  auto report = convert::convert_model(model, out, opt, a.get_or("calib", ""), [&](int64_t d, int64_t n) {
    if (!layers_bar) layers_bar = std::make_unique<Progress>("convert", n);
    layers_bar->update(d);
  });
  if (layers_bar) layers_bar->finish();
  bar.finish();
  if (a.flag("json")) {
    std::cout << report.dump() << "\n";
    return 0;
  }
  std::printf("converted %s -> %s\n", model.c_str(), out.c_str());
  std::printf("rope %s, r = %lld; svd %s, d_kv = %lld, latent %lld\n", report["rope"].get<std::string>().c_str(),
              static_cast<long long>(opt.rope_dims), opt.svd.c_str(), static_cast<long long>(opt.dkv),
              report["latent_dim"].get<long long>());
  std::printf("KV cache per token per layer: %lld -> %lld values (%.2f%%, -%.2f%%)\n",
              report["kv_values_per_token_per_layer_before"].get<long long>(),
              report["kv_values_per_token_per_layer_after"].get<long long>(), 100 * report["kv_cache_ratio"].get<double>(),
              100 * report["kv_cache_reduction"].get<double>());
  std::printf("%-6s %10s %10s", "layer", "K rel err", "V rel err");
  bool heldout = !report["layers"].empty() && report["layers"][0].contains("k_rel_err_heldout");
  bool plain = !report["layers"].empty() && report["layers"][0].contains("k_rel_err_heldout_plain_svd");
  if (heldout) std::printf(" %12s %12s", "K held-out", "V held-out");
  if (plain) std::printf(" %14s %14s", "K plain SVD", "V plain SVD");
  std::printf("\n");
  for (const auto& l : report["layers"]) {
    std::printf("%-6lld %10.4f %10.4f", l["layer"].get<long long>(), l["k_rel_err"].get<double>(),
                l["v_rel_err"].get<double>());
    if (heldout) std::printf(" %12.4f %12.4f", l["k_rel_err_heldout"].get<double>(), l["v_rel_err_heldout"].get<double>());
    if (plain)
      std::printf(" %14.4f %14.4f", l["k_rel_err_heldout_plain_svd"].get<double>(),
                  l["v_rel_err_heldout_plain_svd"].get<double>());
    std::printf("\n");
  }
  const auto& kf = report["kept_frequencies"];
  if (kf["same_for_all_heads"].get<bool>()) {
    std::printf("kept frequencies (all layers and heads): %s\n", kf["frequencies"].dump().c_str());
  } else {
    std::printf("kept frequencies vary per layer/head; most kept [index, count]: %s\n", kf["most_kept"].dump().c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
