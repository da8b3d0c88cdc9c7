// mha2mla generate: stream a continuation of a prompt.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "kernels/attention.h"
#include "infer/generate.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {

// The --json keys, as --help lists them (a test compares the two).
constexpr const char* kJsonKeys =
    "text, tokens, prompt_tokens, new_tokens,\n"
    "stop_reason, prefill_s, decode_s, decode_tokens_per_s, runtime, peak_rss_bytes, cache_bytes,\n"
    "cache_bytes_per_token, cache_capacity_bytes, cache_tokens, cache_residual_tokens, execution";

std::string stop_text(infer::StopReason r, int64_t max_new, int64_t max_pos) {
  switch (r) {
    case infer::StopReason::Eos: return "stopped at EOS";
    case infer::StopReason::MaxNew: return "stopped at --max-new " + std::to_string(max_new);
    case infer::StopReason::Context:
      return "stopped at the context limit (max_position_embeddings " + std::to_string(max_pos) + ")";
  }
  return "";
}

// What the cache holds; with an integer type, how many tokens are quantized and how many are still in the
// full-precision residual (short runs quantize nothing, so they save nothing).
std::string cache_text(const model::CacheStats& s, const model::RuntimeOptions& rt) {
  std::string t = "cache " + format_bytes(s.bytes) + " holds " + std::to_string(s.tokens) +
                  " tokens (the prompt and every new token but the last)";
  std::optional<model::CacheType> q;
  if (rt.cache.type && model::is_quantized(*rt.cache.type)) q = rt.cache.type;
  for (const auto& [name, type] : rt.cache.type_of)
    if (!q && model::is_quantized(type)) q = type;
  if (!q) return t;
  const int64_t quantized = s.tokens - s.residual_tokens;
  const std::string full = dtype_flag_name(rt.dtype);
  if (quantized == 0)
    return t + ", all in " + full + ": " + model::cache_type_name(*q) + " begins only past the newest " +
           std::to_string(rt.cache.residual) + " (--cache-residual)";
  return t + ": " + std::to_string(quantized) + " in " + model::cache_type_name(*q) + ", the newest " +
         std::to_string(s.residual_tokens) + " in " + full + " (--cache-residual " + std::to_string(rt.cache.residual) +
         ")";
}

}  // namespace

int cmd_generate(const Args& a) {
  std::string dir, prompt;
  infer::GenerateOptions opt;
  model::RuntimeOptions rt;
  bool json = false;
  int64_t seed = 0;
  OptionTable t("generate", "--model DIR --prompt TEXT [options]",
                "Streams the model's continuation of TEXT to stdout; speed and cache size go to stderr.");
  t.required("model", "DIR", "model folder (config.json, safetensors, tokenizer.json)", [&](auto& v) { dir = v; })
      .required("prompt", "TEXT", "the prompt (the tokenizer's default special tokens are added)",
                [&](auto& v) { prompt = v; })
      .integer("max-new", "N",
               "tokens to generate at most; generation stops earlier at EOS or when the model's\n"
               "positions (max_position_embeddings) run out, and the report says which",
               opt.max_new, 1)
      .number("temperature", "T", "0 = greedy", opt.sampling.temperature)
      .number("top-p", "P", "nucleus sampling mass", opt.sampling.top_p)
      .integer("seed", "S", "sampling seed", seed, 0);
  add_runtime_options(t, rt, kAllRuntime);
  t.toggle("json", "no streaming; one JSON object {" + std::string(kJsonKeys) + "}", json);
  t.note("Statistics go to stderr on a line of their own: prompt tokens and prefill time, new tokens and\n"
         "speed, why generation stopped (EOS, --max-new or the context limit), and the cache: its bytes and\n"
         "the tokens it holds (the prompt and every new token but the last, which is never fed back), with\n"
         "an integer --cache-type how many are quantized and how many are still in the compute dtype.");
  if (!t.parse(a)) return 0;
  opt.sampling.seed = static_cast<uint64_t>(seed);
  try {
    infer::Sampler validate_only(opt.sampling);  // rejects bad values before the model loads
  } catch (const Error& e) {
    usage_fail(e.what());  // a bad --temperature or --top-p
  }

  io::check_model_folder(dir, io::kModelAll);
  auto tok = tok::Tokenizer::load(dir);
  std::vector<int32_t> p32;
  try {
    p32 = tok.encode(prompt, /*add_special_tokens=*/true);
  } catch (const Error& e) {
    fail(std::string("prompt: ") + e.what());
  }
  check(!p32.empty(), "the prompt encodes to no tokens");
  auto m = model::load_model(dir, rt);
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
  model::CacheStats stats;
  std::vector<infer::StopReason> stops;
  auto res = infer::generate(*m, {prompt_ids}, opt, on_token, &stats, &stops);
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
                     {"stop_reason", infer::stop_reason_name(stops.at(0))},
                     {"prefill_s", prefill_s},
                     {"decode_s", decode_s},
                     {"decode_tokens_per_s", decode_tps},
                     {"runtime", runtime_json(rt)},
                     {"peak_rss_bytes", peak_rss_bytes()}};
    o.update(stats.to_json());
    // What ran: the decode steps of the fused step and of the layers (and why), and the last attention kernel.
    o["execution"] = {{"decode_steps_fused", m->fused_decode_steps},
                      {"decode_steps_layers", m->layer_decode_steps},
                      {"layers_because", m->layer_decode_reason},
                      {"attention", kernels::last_decode_kernel()}};
    std::cout << o.dump() << "\n";
  } else {
    if (printed < text.size()) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    // The statistics start a line of their own, also where stdout and stderr share one pipe.
    if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu prompt tokens, prefill %.3fs; %lld new tokens, %.1f tokens/s, %s; %s; peak memory %s]\n",
                 prompt_ids.size(), prefill_s, static_cast<long long>(n_new), decode_tps,
                 stop_text(stops.at(0), opt.max_new, m->config().max_position_embeddings).c_str(),
                 cache_text(stats, rt).c_str(), format_bytes(peak_rss_bytes()).c_str());
  }
  return 0;
}

}  // namespace mha2mla::cli
