// mha2mla ppl: sliding-window perplexity of a text file.
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "eval/perplexity.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/progress.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {
// Below this many predicted tokens a perplexity is mostly noise (one token is one draw), so ppl warns.
constexpr int64_t kFewTokens = 100;
}  // namespace

int cmd_ppl(const Args& a) {
  std::string dir, text_path;
  model::RuntimeOptions rt;
  eval::PplOptions po;
  po.ctx = po.stride = -1;  // derived from the model unless given
  bool json = false, through_cache = false;
  OptionTable t("ppl", "--model DIR --text FILE [options]",
                "Perplexity of FILE's tokens. The whole file is tokenized as one string with the tokenizer's\n"
                "default special tokens; windows of N tokens advance by S (at most N-1), and every token after\n"
                "the first is predicted exactly once. ppl = exp(mean NLL).");
  t.required("model", "DIR", "model folder (config.json, safetensors, tokenizer.json)", [&](auto& v) { dir = v; })
      .required("text", "FILE", "UTF-8 text", [&](auto& v) { text_path = v; })
      .integer("ctx", "N", "window length", po.ctx, 2, "min(max_position_embeddings, 2048)")
      .integer("stride", "S", "window step", po.stride, 1, "N/2")
      .integer("chunk", "N",
               "feed each window through the cache N tokens at a time, so every token attends to its\n"
               "cached (possibly quantized) context as in generation; 0 = no cache",
               po.chunk, 0, "0, or 64 when a --cache-* option is given");
  add_runtime_options(t, rt, kAllRuntime);
  t.toggle("json", "one JSON object: {ppl, nll, tokens, windows, ctx, stride, chunk, seconds, tokens_per_s,\n"
                   "runtime, peak_rss_bytes, and with a cache cache_bytes, cache_bytes_per_token,\n"
                   "cache_capacity_bytes, cache_tokens, cache_residual_tokens}",
           json);
  t.note("Fewer than " + std::to_string(kFewTokens) + " predicted tokens give a warning on stderr: so few say little.");
  if (!t.parse(a)) return 0;
  for (const auto& o : {"cache-type", "cache-type-kr", "cache-residual", "cache-group", "cache-axis"})
    through_cache = through_cache || a.flag(o);
  if (through_cache && !a.flag("chunk")) po.chunk = 64;
  usage_check(!through_cache || po.chunk > 0, "--cache-* options need --chunk N > 0 (the cache is used only with chunks)");

  io::check_model_folder(dir, io::kModelAll);
  auto ids = tok::encode_text_file(tok::Tokenizer::load(dir), text_path);
  auto m = model::load_model(dir, rt);
  if (po.ctx < 0) po.ctx = std::min<int64_t>(m->config().max_position_embeddings, 2048);
  if (po.stride < 0) po.stride = std::max<int64_t>(1, po.ctx / 2);
  Progress bar("ppl", static_cast<int64_t>(ids.size()));
  auto r = eval::perplexity(*m, ids, po, [&](int64_t d, int64_t) { bar.update(d); });
  bar.finish();
  if (r.tokens < kFewTokens)
    std::fprintf(stderr, "warning: %s gives only %lld predicted token%s: this perplexity says little about the model\n",
                 text_path.c_str(), static_cast<long long>(r.tokens), r.tokens == 1 ? "" : "s");
  if (json) {
    nlohmann::json out{{"ppl", r.ppl},         {"nll", r.nll},         {"tokens", r.tokens},
                       {"windows", r.windows}, {"ctx", po.ctx},        {"stride", po.stride},
                       {"chunk", po.chunk},    {"seconds", r.seconds}, {"tokens_per_s", r.tokens / std::max(r.seconds, 1e-9)},
                       {"runtime", runtime_json(rt)}, {"peak_rss_bytes", peak_rss_bytes()}};
    if (po.chunk > 0) out.update(r.cache.to_json());
    std::cout << out.dump() << "\n";
  } else {
    std::printf("ppl %.4f  nll %.5f  tokens %lld  windows %lld  (ctx %lld, stride %lld, %.1fs)", r.ppl, r.nll,
                static_cast<long long>(r.tokens), static_cast<long long>(r.windows), static_cast<long long>(po.ctx),
                static_cast<long long>(po.stride), r.seconds);
    if (po.chunk > 0)
      std::printf("  cache %s, %.1f bytes/token", format_bytes(r.cache.bytes).c_str(), r.cache.bytes_per_token());
    std::printf("  peak memory %s\n", format_bytes(peak_rss_bytes()).c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
