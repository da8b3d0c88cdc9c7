// mha2mla calibrate: q/k frequency norms and attention-input covariances of a model over a text.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "convert/calibrate.h"
#include "convert/rope_select.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/progress.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {

// The 4 highest-scoring frequencies of each KV head of layer l, best first.
void print_best(const torch::Tensor& ranks, int64_t l) {
  const int64_t n_kv = ranks.size(1), half = ranks.size(2) / 2;
  std::printf("layer %lld best frequencies (2-norm q·k, best first):", static_cast<long long>(l));
  for (int64_t h = 0; h < n_kv; ++h) {
    std::vector<int64_t> best(std::min<int64_t>(4, half), -1);
    for (int64_t i = 0; i < half; ++i) {
      int64_t r = ranks[l][h][i].item<int64_t>();
      if (r < static_cast<int64_t>(best.size())) best[r] = i;
    }
    std::printf("  kv%lld [", static_cast<long long>(h));
    for (size_t k = 0; k < best.size(); ++k) std::printf("%s%lld", k ? " " : "", static_cast<long long>(best[k]));
    std::printf("]");
  }
  std::printf("\n");
}

}  // namespace

int cmd_calibrate(const Args& a) {
  std::string dir, text_path, out;
  int64_t samples = 64, ctx = -1;
  bool json = false;
  model::RuntimeOptions rt;
  OptionTable t("calibrate", "--model DIR --text FILE --out FILE [options]",
                "Runs the model over FILE's tokens in consecutive windows of T tokens (at most N windows) and records,\n"
                "per layer, what conversion to MLA needs: the mean 2-norm of every (i, i + head_dim/2) pair of the\n"
                "q and k projections (for 2-norm partial RoPE) and the covariance of the attention inputs (for\n"
                "activation-aware low-rank factorisation). The last ~10% of the windows (at least one when there are\n"
                "two or more) are held out: they only feed a separate covariance, for evaluating the factorisation.");
  t.required("model", "DIR", "unconverted model folder (config.json, safetensors, tokenizer.json)",
             [&](auto& v) { dir = v; })
      .required("text", "FILE", "UTF-8 calibration text, tokenized as one string", [&](auto& v) { text_path = v; })
      .required("out", "FILE",
                "output .safetensors: q_norm [layers, heads, head_dim/2], k_norm [layers, kv_heads,\n"
                "head_dim/2], scores (group-summed q·k norms), ranks [layers, kv_heads, head_dim]\n"
                "(0 = best, halves repeated), cov.L and cov_heldout.L [hidden, hidden] fp64, and\n"
                "metadata with the token counts and the model's fingerprint",
                [&](auto& v) { out = v; })
      .integer("samples", "N", "most windows to use", samples, 1)
      .integer("ctx", "T", "window length in tokens", ctx, 1, "min(max_position_embeddings, 512)");
  add_runtime_options(t, rt, kDevice | kDtype);
  t.toggle("json", "print {out, tokens, heldout_tokens, samples, ctx, layers, seconds, peak_rss_bytes, runtime} as\n"
                   "JSON; the statistics are accumulated in fp64 whatever --dtype computes in", json);
  if (!t.parse(a)) return 0;
  io::check_model_folder(dir, io::kModelAll);
  // Look at the raw config first: a converted model's weights would not even load as a standard one.
  nlohmann::json raw;
  try {
    raw = nlohmann::json::parse(read_text_file(dir + "/config.json"));
  } catch (const nlohmann::json::exception&) {
    // ModelConfig::load below reports malformed JSON with its own message.
  }
  check(!(raw.is_object() && raw.contains("mha2mla")),
        "model is already converted to MLA (" + dir + "/config.json has an \"mha2mla\" section)");
  auto cfg = io::ModelConfig::load(dir);
  if (ctx < 0) ctx = std::min<int64_t>(cfg.max_position_embeddings, 512);

  auto ids = tok::encode_text_file(tok::Tokenizer::load(dir), text_path);
  check(static_cast<int64_t>(ids.size()) >= ctx, "calibration text has " + std::to_string(ids.size()) +
                                                     " tokens, need at least " + std::to_string(ctx));

  const auto t0 = std::chrono::steady_clock::now();
  auto m = model::load_model(dir, rt);
  check(!m->config().raw.contains("mha2mla"), "model is already converted to MLA");
  Progress bar("calibrate", std::min<int64_t>(samples, static_cast<int64_t>(ids.size()) / ctx));
  auto s = convert::calibrate(*m, ids, samples, ctx, [&](int64_t d, int64_t) { bar.update(d); });
  bar.finish();
  s.fingerprint = convert::model_fingerprint(dir);
  convert::save_calib(out, s);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const int64_t L = m->config().num_layers;
  if (json) {
    nlohmann::json j{{"out", out},          {"tokens", s.tokens}, {"heldout_tokens", s.heldout_tokens},
                     {"samples", s.samples}, {"ctx", s.ctx},       {"layers", L},
                     {"seconds", secs},      {"peak_rss_bytes", peak_rss_bytes()}, {"runtime", runtime_json(rt)}};
    std::cout << j.dump() << "\n";
  } else {
    // Windows and tokens both split into statistics + held out, so the numbers add up as printed.
    const int64_t held = s.heldout_tokens / s.ctx;
    std::printf("calibrated on %lld windows of %lld tokens: %lld for the statistics (%lld tokens), %lld held out "
                "(%lld tokens) -> %s\n",
                static_cast<long long>(s.samples), static_cast<long long>(s.ctx),
                static_cast<long long>(s.samples - held), static_cast<long long>(s.tokens), static_cast<long long>(held),
                static_cast<long long>(s.heldout_tokens), out.c_str());
    auto ranks = convert::ranks_from_scores(convert::two_norm_scores(s, m->config().num_kv_heads));
    print_best(ranks, 0);
    if (L > 1) print_best(ranks, L - 1);
    std::printf("%.1fs, peak memory %s\n", secs, format_bytes(peak_rss_bytes()).c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
