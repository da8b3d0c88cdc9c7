#pragma once
// `mha2mla bench`: prefill and decode speed of MHA against the MLA ladder, per cache type, context and batch,
// with the machine's read bandwidth and matmul throughput measured in the same run, so every figure can be
// read as a fraction of what the hardware allows.
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "io/config.h"
#include "model/runtime_options.h"

namespace mha2mla::infer {

// smollm-135m | smollm-360m | llama2-7b | llama2-7b-layers=N: an HF config of that shape.
nlohmann::json shape_config(const std::string& shape);

// "mha" -> the config itself; "mla-68.75" | "mla-81.25" | "mla-87.5" -> an MLA config whose cache keeps
// (1 − reduction) of the MHA cache: r = d_h/8 rotated dims and d_kv = 2·d_h·(1 − reduction) − r, joint latent.
io::ModelConfig variant_config(const nlohmann::json& base, const std::string& variant);

struct BenchOptions {
  std::string shape = "smollm-135m";  // ignored when model_dir is set
  std::string model_dir;              // a real model folder (its MHA/GQA or MLA form only)
  std::vector<std::string> models{"mha", "mla-68.75", "mla-81.25", "mla-87.5"};
  std::vector<std::string> cache_types{"bf16", "int4"};
  std::vector<int64_t> contexts{1024, 4096, 16384};
  std::vector<int64_t> batches{1};
  bool no_prefill = false;     // fill caches with synthetic values instead of running the prompt
  int64_t prefill_chunk = 512; // prompt tokens per forward (chunked prefill bounds the score matrix)
  int64_t decode_steps = 8;
  int64_t repeats = 3;         // timed decode runs per cell: the median is reported, with the range
  model::RuntimeOptions rt;    // device, dtype, residual, group, attention
};

struct BenchCell {
  std::string model, cache_type;
  int64_t context = 0, batch = 0;
  double kv_bytes_per_token = 0;      // across layers, per sequence, at this cache type
  double prefill_tokens_per_s = -1;   // -1: not measured (--no-prefill)
  double decode_tokens_per_s = 0;     // batch × steps / time: the median over the repeats
  double decode_tokens_per_s_min = 0, decode_tokens_per_s_max = 0;  // their range
  int64_t repeats = 1;
  double attn_step_ms = 0;            // attention over the cache, all layers, per decode step (median run)
  double attn_gbs = 0;                // cache bytes read per step / attention time
  double weight_bytes = 0;            // weights a decode step reads (all but the embedding table's other rows)
  double decode_roofline = 0;         // decode_tokens_per_s / (batch · read bandwidth / (weight + cache bytes))
  double prefill_matmul_fraction = -1;  // prefill FLOP/s over the measured matmul FLOP/s of the dtype; -1: not measured
  nlohmann::json to_json() const;
};

double measure_read_bandwidth_gbs(const torch::Device& device);
double measure_matmul_gflops(torch::ScalarType dtype, const torch::Device& device);

// Runs every cell; `progress(done, total, cell)` after each. Returns
// {read_bandwidth_gbs, matmul_gflops: {f32, bf16}, shape, dtype, device, cells: [...]}.
nlohmann::json run_bench(const BenchOptions& opt,
                         const std::function<void(int64_t, int64_t, const BenchCell&)>& progress = {});

// A Markdown table of the cells, and an SVG plot of decode tokens/s against context for every configuration (a bar
// chart per configuration, with the repeats' range, when there is one context).
std::string bench_markdown(const nlohmann::json& result);
std::string bench_svg(const nlohmann::json& result);

}  // namespace mha2mla::infer
