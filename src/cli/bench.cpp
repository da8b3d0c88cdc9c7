// mha2mla bench: decode and prefill speed of MHA against the MLA ladder, per cache type and context.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "infer/bench.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/progress.h"

namespace mha2mla::cli {
namespace {

std::vector<std::string> split_list(const std::string& option, const std::string& v) {
  std::vector<std::string> out;
  std::istringstream in(v);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  usage_check(!out.empty(), "--" + option + " needs at least one value");
  return out;
}

// "1024", "4K", "16k" -> tokens.
int64_t parse_tokens(const std::string& option, std::string v) {
  int64_t mult = 1;
  if (!v.empty() && (v.back() == 'K' || v.back() == 'k')) {
    mult = 1024;
    v.pop_back();
  }
  const int64_t n = parse_int(option, v) * mult;
  usage_check(n >= 1, "--" + option + " values must be positive");
  return n;
}

}  // namespace

int cmd_bench(const Args& a) {
  infer::BenchOptions o;
  o.rt.dtype = torch::kBFloat16;
  std::string out_prefix;
  bool json = false;
  OptionTable t("bench", "[--shape NAME | --model DIR] [options]",
                "Measures prefill and decode speed of an MHA model against its MLA conversions (-68.75%, -81.25%,\n"
                "-87.5% KV cache) for each cache type, context and batch, with the attention step's time and\n"
                "achieved bandwidth. The machine's read bandwidth and matmul throughput are measured in the same\n"
                "run. Synthetic shapes use random weights: speed does not depend on the values.");
  t.text("shape", "NAME", "smollm-135m | smollm-360m | llama2-7b | llama2-7b-layers=N", o.shape)
      .text("model", "DIR", "a real model folder instead of a shape (run as it is, no ladder)", o.model_dir, "none")
      .value("models", "LIST", "variants: mha, mla-68.75, mla-81.25, mla-87.5",
             [&](auto& v) { o.models = split_list("models", v); }, "mha,mla-68.75,mla-81.25,mla-87.5")
      .value("cache-types", "LIST", "cache storage types to measure (f32, bf16, f16, int8, int4, int2)",
             [&](auto& v) {
               o.cache_types = split_list("cache-types", v);
               for (const auto& c : o.cache_types) model::parse_cache_type(c);
             },
             "bf16,int4")
      .value("contexts", "LIST", "cached tokens before decoding (a K suffix means ×1024)",
             [&](auto& v) {
               o.contexts.clear();
               for (const auto& c : split_list("contexts", v)) o.contexts.push_back(parse_tokens("contexts", c));
             },
             "1024,4096,16384")
      .value("batch", "LIST", "batch sizes", [&](auto& v) {
        o.batches.clear();
        for (const auto& b : split_list("batch", v)) o.batches.push_back(parse_tokens("batch", b));
      }, "1")
      .toggle("no-prefill", "fill the caches with synthetic values instead of running the prompt", o.no_prefill)
      .integer("prefill-chunk", "N", "prompt tokens per forward during prefill", o.prefill_chunk, 1)
      .integer("steps", "N", "decode steps timed per run", o.decode_steps, 1)
      .integer("repeats", "N", "timed decode runs per cell; the table, plot and JSON give their median and range",
               o.repeats, 1);
  add_runtime_options(t, o.rt, kDevice | kDtype | kCacheQuant | kAttn);  // --cache-types replaces --cache-type
  t.text("out", "PREFIX", "also write PREFIX.json, PREFIX.md and PREFIX.svg", out_prefix, "none")
      .toggle("json", "print the result as one JSON object {read_bandwidth_gbs, matmul_gflops: {f32, bf16},\n"
                      "shape, dtype, decode_step, device, cells: [{model, cache_type, context, batch, kv_bytes_per_token,\n"
                      "prefill_tokens_per_s, prefill_matmul_fraction, decode_tokens_per_s (the median),\n"
                      "decode_tokens_per_s_min, decode_tokens_per_s_max, repeats, attn_step_ms, attn_gbs,\n"
                      "weight_bytes, decode_roofline}], peak_rss_bytes}",
              json);
  if (!t.parse(a)) return 0;
  if (!out_prefix.empty()) {
    auto parent = std::filesystem::path(out_prefix).parent_path();
    check(parent.empty() || std::filesystem::is_directory(parent), "--out: folder " + parent.string() + " does not exist");
  }
  int64_t total = static_cast<int64_t>((o.model_dir.empty() ? o.models.size() : 1) * o.cache_types.size() *
                                       o.contexts.size() * o.batches.size());
  Progress bar("bench", total);
  auto r = infer::run_bench(o, [&](int64_t done, int64_t, const infer::BenchCell& c) {
    bar.update(done, c.model + " " + c.cache_type + " " + std::to_string(c.context));
  });
  bar.finish();
  r["peak_rss_bytes"] = peak_rss_bytes();
  const std::string md = infer::bench_markdown(r);
  if (!out_prefix.empty()) {
    write_text_atomic(out_prefix + ".json", r.dump(2) + "\n");
    write_text_atomic(out_prefix + ".md", md);
    write_text_atomic(out_prefix + ".svg", infer::bench_svg(r));
  }
  if (json) {
    std::cout << r.dump() << "\n";
  } else {
    std::cout << md;
  }
  return 0;
}

}  // namespace mha2mla::cli
