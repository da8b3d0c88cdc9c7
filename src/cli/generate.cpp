// mha2mla generate: stream a continuation of a prompt.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/cli.h"
#include "infer/generate.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/text.h"

namespace mha2mla::cli {

int cmd_generate(const Args& a) {
  if (a.help()) {
    std::puts(
        "usage: mha2mla generate --model DIR --prompt TEXT [--max-new N] [--temperature T] [--top-p P]\n"
        "                        [--seed S] [--dtype f32|bf16] [--json]\n\n"
        "Streams the model's continuation of TEXT to stdout; speed goes to stderr.\n\n"
        "  --model DIR        model folder (config.json, safetensors, tokenizer.json)\n"
        "  --prompt TEXT      the prompt (the tokenizer's default special tokens are added)\n"
        "  --max-new N        tokens to generate at most (default 64); stops early at EOS\n"
        "  --temperature T    0 = greedy (default 0)\n"
        "  --top-p P          nucleus sampling mass (default 1.0)\n"
        "  --seed S           sampling seed (default 0)\n"
        "  --dtype T          f32 (default) or bf16\n"
        "  --json             no streaming; one JSON object {text, tokens, prompt_tokens, prefill_s, decode_s, ...}");
    return 0;
  }
  a.validate({"model", "prompt", "max-new", "temperature", "top-p", "seed", "dtype"}, {"json"});
  const std::string dir = a.require("model");
  const std::string prompt = a.require("prompt");
  infer::GenerateOptions opt;
  opt.max_new = a.get_int("max-new", 64);
  check(opt.max_new >= 1, "--max-new must be at least 1");
  opt.sampling.temperature = a.get_double("temperature", 0.0);
  opt.sampling.top_p = a.get_double("top-p", 1.0);
  opt.sampling.seed = static_cast<uint64_t>(a.get_int("seed", 0));
  infer::Sampler validate_only(opt.sampling);  // rejects bad values before the model loads
  auto dtype = model::parse_compute_dtype(a.get_or("dtype", "f32"));
  const bool json = a.flag("json");

  auto tok = tok::Tokenizer::load(dir);
  std::vector<int32_t> p32;
  try {
    p32 = tok.encode(prompt, /*add_special_tokens=*/true);
  } catch (const Error& e) {
    fail(std::string("prompt: ") + e.what());
  }
  check(!p32.empty(), "the prompt encodes to no tokens");
  auto m = model::load_model(dir, dtype);
  opt.stop_ids = m->config().eos_token_ids;
  std::vector<int64_t> prompt_ids(p32.begin(), p32.end());

  std::vector<int32_t> out_ids;
  size_t printed = 0;
  auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point t_first;
  bool first = true;
  auto on_token = [&](int64_t, int64_t id) {
    if (first) {
      t_first = std::chrono::steady_clock::now();
      first = false;
    }
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) return;
    out_ids.push_back(static_cast<int32_t>(id));
    if (json) return;
    std::string text = tok.decode(out_ids, /*skip_special_tokens=*/true);
    size_t stable = stable_utf8_prefix(text);
    if (stable > printed) {
      std::fwrite(text.data() + printed, 1, stable - printed, stdout);
      std::fflush(stdout);
      printed = stable;
    }
  };
  auto res = infer::generate(*m, {prompt_ids}, opt, on_token);
  auto t1 = std::chrono::steady_clock::now();
  std::string text = tok.decode(out_ids, true);
  const double prefill_s = std::chrono::duration<double>(t_first - t0).count();
  const double decode_s = std::chrono::duration<double>(t1 - t_first).count();
  const int64_t n_new = static_cast<int64_t>(res[0].size());
  const double decode_tps = n_new > 1 ? (n_new - 1) / std::max(decode_s, 1e-9) : 0.0;
  if (json) {
    nlohmann::json o{{"text", text},
                     {"tokens", res[0]},
                     {"prompt_tokens", prompt_ids.size()},
                     {"new_tokens", n_new},
                     {"prefill_s", prefill_s},
                     {"decode_s", decode_s},
                     {"decode_tokens_per_s", decode_tps}};
    std::cout << o.dump() << "\n";
  } else {
    if (printed < text.size()) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::printf("\n");
    std::fprintf(stderr, "[%zu prompt tokens, prefill %.3fs; %lld new tokens, %.1f tokens/s]\n", prompt_ids.size(),
                 prefill_s, static_cast<long long>(n_new), decode_tps);
  }
  return 0;
}

}  // namespace mha2mla::cli
