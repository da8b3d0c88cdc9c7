// mha2mla ppl: sliding-window perplexity of a text file.
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "eval/perplexity.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/atomic_file.h"

namespace mha2mla::cli {

int cmd_ppl(const Args& a) {
  if (a.help()) {
    std::puts(
        "usage: mha2mla ppl --model DIR --text FILE [--ctx N] [--stride S] [--dtype f32|bf16] [--json]\n\n"
        "Perplexity of FILE's tokens. The whole file is tokenized as one string with the tokenizer's\n"
        "default special tokens; windows of N tokens advance by S (at most N-1), and every token after the first is\n"
        "predicted exactly once. ppl = exp(mean NLL).\n\n"
        "  --model DIR    model folder (config.json, safetensors, tokenizer.json)\n"
        "  --text FILE    UTF-8 text\n"
        "  --ctx N        window length (default: min(max_position_embeddings, 2048))\n"
        "  --stride S     window step (default: N/2)\n"
        "  --dtype T      f32 (default) or bf16\n"
        "  --json         one JSON object: {ppl, nll, tokens, windows, ctx, stride, seconds, tokens_per_s}");
    return 0;
  }
  a.validate({"model", "text", "ctx", "stride", "dtype"}, {"json"});
  const std::string dir = a.require("model");
  const std::string text_path = a.require("text");
  auto dtype = model::parse_compute_dtype(a.get_or("dtype", "f32"));
  auto ids = tok::encode_text_file(tok::Tokenizer::load(dir), text_path);
  auto m = model::load_model(dir, dtype);
  int64_t ctx = a.get_int("ctx", std::min<int64_t>(m->config().max_position_embeddings, 2048));
  int64_t stride = a.get_int("stride", std::max<int64_t>(1, ctx / 2));
  Progress bar("ppl", static_cast<int64_t>(ids.size()));
  auto r = eval::perplexity(*m, ids, ctx, stride, [&](int64_t d, int64_t) { bar.update(d); });
  bar.finish();
  if (a.flag("json")) {
    nlohmann::json out{{"ppl", r.ppl},         {"nll", r.nll},       {"tokens", r.tokens},
                       {"windows", r.windows}, {"ctx", ctx},         {"stride", stride},
                       {"seconds", r.seconds}, {"tokens_per_s", r.tokens / std::max(r.seconds, 1e-9)}};
    std::cout << out.dump() << "\n";
  } else {
    std::printf("ppl %.4f  nll %.5f  tokens %lld  windows %lld  (ctx %lld, stride %lld, %.1fs)\n", r.ppl, r.nll,
                static_cast<long long>(r.tokens), static_cast<long long>(r.windows), static_cast<long long>(ctx),
                static_cast<long long>(stride), r.seconds);
  }
  return 0;
}

}  // namespace mha2mla::cli
