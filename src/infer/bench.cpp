#include "infer/bench.h"

#include <chrono>
#include <cmath>
#include <algorithm>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

#include "kernels/gemv.h"
#include "model/transformer.h"
#include "util/error.h"
#include "util/svg_chart.h"

namespace mha2mla::infer {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

nlohmann::json llama(int64_t vocab, int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv,
                     bool tied, int64_t max_pos) {
  return {{"model_type", "llama"},        {"vocab_size", vocab},       {"hidden_size", hidden},
          {"intermediate_size", inter},   {"num_hidden_layers", layers}, {"num_attention_heads", heads},
          {"num_key_value_heads", kv},    {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
          {"max_position_embeddings", max_pos}, {"tie_word_embeddings", tied}, {"bos_token_id", 1},
          {"eos_token_id", 2},            {"torch_dtype", "bfloat16"}};
}

}  // namespace

nlohmann::json shape_config(const std::string& shape) {
  // Positions are raised to 32K: the benchmark measures speed at long context, not quality.
  if (shape == "smollm-135m") return llama(49152, 576, 1536, 30, 9, 3, true, 32768);
  if (shape == "smollm-360m") return llama(49152, 960, 2560, 32, 15, 5, true, 32768);
  if (shape.rfind("llama2-7b", 0) == 0) {
    int64_t layers = 32;
    if (shape.size() > 9) {
      const std::string rest = shape.substr(9);
      check(rest.rfind("-layers=", 0) == 0, "unknown shape \"" + shape + "\" (llama2-7b or llama2-7b-layers=N)");
      try {
        layers = std::stoll(rest.substr(8));
      } catch (...) {
        fail("bad layer count in shape \"" + shape + "\"");
      }
      check(layers >= 1 && layers <= 32, "llama2-7b-layers=N needs N in [1, 32]");
    }
    return llama(32000, 4096, 11008, layers, 32, 32, false, 32768);
  }
  fail("unknown shape \"" + shape + "\" (smollm-135m, smollm-360m, llama2-7b, llama2-7b-layers=N)");
}

io::ModelConfig variant_config(const nlohmann::json& base, const std::string& variant) {
  auto j = base;
  if (variant == "mha") {
    j.erase("mha2mla");
    return io::ModelConfig::from_json(j, "bench " + variant);
  }
  check(variant.rfind("mla-", 0) == 0, "unknown model variant \"" + variant + "\" (mha, mla-68.75, mla-81.25, mla-87.5)");
  double reduction = 0;
  try {
    reduction = std::stod(variant.substr(4)) / 100.0;
  } catch (...) {
    fail("bad model variant \"" + variant + "\"");
  }
  const auto cfg = io::ModelConfig::from_json(j, "bench base");
  const int64_t d_h = cfg.head_dim, r = std::max<int64_t>(2, d_h / 8);
  const double keep = 2.0 * static_cast<double>(d_h) * (1.0 - reduction);
  const int64_t dkv = static_cast<int64_t>(std::llround(keep)) - r;
  check(reduction > 0 && reduction < 1 && dkv >= 1 && std::fabs(keep - std::round(keep)) < 1e-9,
        "model variant \"" + variant + "\" does not give a whole latent rank for head_dim " + std::to_string(d_h));
  j["mha2mla"] = {{"partial_rope_version", "high"}, {"rope_dim_for_mla", r}, {"svd_init_method", "joint"},
                  {"low_rank", dkv}};
  return io::ModelConfig::from_json(j, "bench " + variant);
}

nlohmann::json BenchCell::to_json() const {
  nlohmann::json j{{"model", model},
                   {"cache_type", cache_type},
                   {"context", context},
                   {"batch", batch},
                   {"kv_bytes_per_token", kv_bytes_per_token},
                   {"decode_tokens_per_s", decode_tokens_per_s},
                   {"decode_tokens_per_s_min", decode_tokens_per_s_min},
                   {"decode_tokens_per_s_max", decode_tokens_per_s_max},
                   {"repeats", repeats},
                   {"attn_step_ms", attn_step_ms},
                   {"attn_gbs", attn_gbs},
                   {"weight_bytes", weight_bytes},
                   {"decode_roofline", decode_roofline}};
  j["prefill_tokens_per_s"] = prefill_tokens_per_s >= 0 ? nlohmann::json(prefill_tokens_per_s) : nlohmann::json(nullptr);
  j["prefill_matmul_fraction"] =
      prefill_matmul_fraction >= 0 ? nlohmann::json(prefill_matmul_fraction) : nlohmann::json(nullptr);
  return j;
}

double measure_read_bandwidth_gbs(const torch::Device& device) {
  torch::NoGradGuard ng;
  auto x = torch::ones({256 << 20}, torch::TensorOptions().dtype(torch::kFloat32).device(device));  // 1 GiB
  double best = 1e300;
  for (int i = 0; i < 5; ++i) {
    sync(device);
    auto t0 = Clock::now();
    auto s = x.sum();
    s.item<float>();
    best = std::min(best, seconds_since(t0));
  }
  return static_cast<double>(x.numel()) * 4.0 / best / 1e9;
}

double measure_matmul_gflops(torch::ScalarType dtype, const torch::Device& device) {
  torch::NoGradGuard ng;
  const int64_t n = device.is_cuda() ? 8192 : 1024;
  auto opt = torch::TensorOptions().dtype(dtype).device(device);
  auto a = torch::randn({n, n}, opt), b = torch::randn({n, n}, opt);
  // The GEMM that prompts run through (kernels::linear_matmul: 16-bit inputs widened to f32 on CPUs whose
  // libtorch has no fast 16-bit GEMM), so that prefill is compared with the matmul it can use.
  kernels::linear_matmul(a, b, {});  // warm-up
  double best = 1e300;
  for (int i = 0; i < 5; ++i) {
    sync(device);
    auto t0 = Clock::now();
    auto c = kernels::linear_matmul(a, b, {});
    sync(device);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * static_cast<double>(n * n * n) / best / 1e9;
}

nlohmann::json run_bench(const BenchOptions& opt, const std::function<void(int64_t, int64_t, const BenchCell&)>& progress) {
  torch::NoGradGuard ng;
  const auto& rt = opt.rt;
  const nlohmann::json base = opt.model_dir.empty() ? shape_config(opt.shape) : nlohmann::json();
  for (auto ctx : opt.contexts) check(ctx >= 1, "--contexts must be positive");
  for (auto b : opt.batches) check(b >= 1, "--batch must be positive");
  check(opt.decode_steps >= 1, "decode steps must be at least 1");
  check(opt.repeats >= 1, "repeats must be at least 1");
  // A real model folder runs as it is (its MHA/GQA or converted MLA form); shapes run the whole ladder.
  const std::vector<std::string> variants = opt.model_dir.empty() ? opt.models : std::vector<std::string>{"model"};
  std::vector<io::ModelConfig> configs;  // built first, so a bad variant fails before any measurement
  for (const auto& v : variants)
    configs.push_back(opt.model_dir.empty() ? variant_config(base, v) : io::ModelConfig::load(opt.model_dir));
  nlohmann::json out{{"read_bandwidth_gbs", measure_read_bandwidth_gbs(rt.device)},
                     {"matmul_gflops",
                      {{"f32", measure_matmul_gflops(torch::kFloat32, rt.device)},
                       {"bf16", measure_matmul_gflops(torch::kBFloat16, rt.device)}}},
                     {"shape", opt.model_dir.empty() ? opt.shape : opt.model_dir},
                     {"dtype", io::torch_dtype_name(rt.dtype)},
                     {"decode_step", rt.decode_step == model::DecodeStepMode::Fused ? "fused" : "layers"},
                     {"device", rt.device.str()},
                     {"cells", nlohmann::json::array()}};
  int64_t done = 0;
  const int64_t total = static_cast<int64_t>(variants.size() * opt.cache_types.size() * opt.contexts.size() *
                                             opt.batches.size());
  for (size_t vi = 0; vi < variants.size(); ++vi) {
    const std::string& variant = variants[vi];
    io::ModelConfig cfg = configs[vi];
    int64_t max_ctx = 0;
    for (auto c : opt.contexts) max_ctx = std::max(max_ctx, c);
    cfg.max_position_embeddings =
        std::max(cfg.max_position_embeddings, max_ctx + opt.repeats * opt.decode_steps + 1);
    model::Transformer m(cfg, rt.dtype, rt.device);
    if (opt.model_dir.empty()) {
      model::init_weights(*m, 0);
    } else {
      model::load_weights(*m, io::Checkpoint::open(opt.model_dir));
    }
    m->set_attn_mode(rt.attn);
    m->set_reference_attention(rt.reference_attention);
    m->set_decode_step(rt.decode_step);
    m->eval();
    // A decode step reads every weight once, except the embedding table (one row per token) when it is not
    // also the output head.
    double weight_bytes = 0, dense_params = 0, head_params = 0;
    for (const auto& kv : m->named_parameters(true)) {
      const bool embed = kv.key() == "model.embed_tokens.weight", head = kv.key() == "lm_head.weight";
      if (!embed || cfg.tie_word_embeddings)
        weight_bytes += static_cast<double>(kv.value().numel() * kv.value().element_size());
      if (kv.value().dim() == 2 && !embed && !head) dense_params += static_cast<double>(kv.value().numel());
    }
    head_params = static_cast<double>(cfg.vocab_size * cfg.hidden_size);
    for (const auto& type : opt.cache_types) {
      model::CacheOptions co = rt.cache;
      co.type = model::parse_cache_type(type);
      const double per_token = model::bytes_per_token(m->cache_specs()[0], co, rt.dtype) * cfg.num_layers;
      for (auto ctx : opt.contexts)
        for (auto batch : opt.batches) {
          BenchCell cell;
          cell.model = variant;
          cell.cache_type = type;
          cell.context = ctx;
          cell.batch = batch;
          cell.kv_bytes_per_token = per_token;
          auto cache = m->make_cache(batch, co);
          if (opt.no_prefill) {
            cache->append_synthetic(ctx, 1);
          } else {
            auto ids = torch::randint(0, cfg.vocab_size, {batch, ctx}, torch::kInt64);
            sync(rt.device);
            auto t0 = Clock::now();
            for (int64_t s = 0; s < ctx; s += opt.prefill_chunk) {
              const int64_t n = std::min(opt.prefill_chunk, ctx - s);
              auto h = m->hidden(ids.narrow(1, s, n), cache.get());
              if (s + n == ctx) m->logits(h.select(1, n - 1));
            }
            sync(rt.device);
            const double secs = seconds_since(t0);
            cell.prefill_tokens_per_s = static_cast<double>(batch * ctx) / secs;
            // Useful FLOPs: 2 per weight and token (the embedding lookup is free, the head runs once), plus the
            // causal attention's q·k and p·v, 2·T²/2 each per head and channel.
            const double attn_flops = 2.0 * static_cast<double>(cfg.num_layers * cfg.num_heads * cfg.head_dim) *
                                      static_cast<double>(ctx) * static_cast<double>(ctx);
            const double flops = static_cast<double>(batch) * (2.0 * dense_params * static_cast<double>(ctx) +
                                                               2.0 * head_params + attn_flops);
            const double peak = out["matmul_gflops"][rt.dtype == torch::kFloat32 ? "f32" : "bf16"].get<double>();
            cell.prefill_matmul_fraction = flops / secs / 1e9 / peak;
          }
          // Cache bytes the attention must read at each step: the context, at this storage type.
          const double read_bytes = static_cast<double>(cache->stats().bytes);
          auto tok = torch::randint(0, cfg.vocab_size, {batch, 1}, torch::kInt64);
          m->logits(m->hidden(tok, cache.get()).select(1, 0));  // warm-up step
          // Runs seconds apart differ by a third on a shared machine: time several, report the median and range.
          std::vector<std::pair<double, double>> runs;  // (seconds, attention seconds)
          for (int64_t r = 0; r < opt.repeats; ++r) {
            double attn = 0;
            m->attn_seconds = &attn;
            sync(rt.device);
            auto t0 = Clock::now();
            for (int64_t i = 0; i < opt.decode_steps; ++i) {
              auto logits = m->logits(m->hidden(tok, cache.get()).select(1, 0));
              tok = logits.argmax(-1, true).to(torch::kCPU);
            }
            sync(rt.device);
            runs.emplace_back(seconds_since(t0), attn);
            m->attn_seconds = nullptr;
          }
          std::sort(runs.begin(), runs.end());
          const auto [secs, attn] = runs[runs.size() / 2];
          const double steps_tokens = static_cast<double>(batch * opt.decode_steps);
          cell.repeats = opt.repeats;
          cell.decode_tokens_per_s = steps_tokens / secs;
          cell.decode_tokens_per_s_min = steps_tokens / runs.back().first;
          cell.decode_tokens_per_s_max = steps_tokens / runs.front().first;
          cell.attn_step_ms = 1e3 * attn / static_cast<double>(opt.decode_steps);
          cell.attn_gbs = read_bytes / (attn / static_cast<double>(opt.decode_steps)) / 1e9;
          cell.weight_bytes = weight_bytes;
          // The fastest a step can be: read the weights once and the whole cache once.
          const double min_step_s = (weight_bytes + read_bytes) / (out["read_bandwidth_gbs"].get<double>() * 1e9);
          cell.decode_roofline = (static_cast<double>(opt.decode_steps) / secs) * min_step_s;
          out["cells"].push_back(cell.to_json());
          if (progress) progress(++done, total, cell);
        }
    }
  }
  return out;
}

std::string bench_markdown(const nlohmann::json& r) {
  std::ostringstream o;
  o << std::fixed;
  o << "Read bandwidth " << std::setprecision(1) << r["read_bandwidth_gbs"].get<double>() << " GB/s; matmul "
    << std::setprecision(0) << r["matmul_gflops"]["f32"].get<double>() << " GFLOP/s f32, "
    << r["matmul_gflops"]["bf16"].get<double>() << " GFLOP/s bf16; " << r["shape"].get<std::string>() << ", "
    << r["dtype"].get<std::string>() << " on " << r["device"].get<std::string>() << ", decode step "
    << r.value("decode_step", std::string("layers")) << ".\n\n";
  int64_t repeats = 1;
  for (const auto& c : r["cells"]) repeats = std::max<int64_t>(repeats, c.value("repeats", 1));
  if (repeats > 1)
    o << "Decode: the median of " << repeats << " timed runs per cell, their range in parentheses; the other\n"
      << "decode columns are from the median run.\n\n";
  o << "| model | cache | context | batch | KV bytes/token | prefill tok/s | prefill % of matmul | decode tok/s | attn ms/step | attn GB/s | attn % of read BW | step % of roofline |\n";
  o << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  const double bw = r["read_bandwidth_gbs"].get<double>();
  for (const auto& c : r["cells"]) {
    o << "| " << c["model"].get<std::string>() << " | " << c["cache_type"].get<std::string>() << " | "
      << c["context"].get<int64_t>() << " | " << c["batch"].get<int64_t>() << " | " << std::setprecision(0)
      << c["kv_bytes_per_token"].get<double>() << " | ";
    if (c["prefill_tokens_per_s"].is_null()) o << "– | – | ";
    else
      o << std::setprecision(0) << c["prefill_tokens_per_s"].get<double>() << " | "
        << 100.0 * c["prefill_matmul_fraction"].get<double>() << "% | ";
    o << std::setprecision(1) << c["decode_tokens_per_s"].get<double>();
    if (c.value("repeats", 1) > 1)
      o << " (" << c["decode_tokens_per_s_min"].get<double>() << "–" << c["decode_tokens_per_s_max"].get<double>() << ")";
    o << " | " << std::setprecision(2)
      << c["attn_step_ms"].get<double>() << " | " << std::setprecision(1) << c["attn_gbs"].get<double>() << " | "
      << std::setprecision(0) << 100.0 * c["attn_gbs"].get<double>() / bw << "% | "
      << 100.0 * c["decode_roofline"].get<double>() << "% |\n";
  }
  return o.str();
}

std::string bench_svg(const nlohmann::json& r) {
  std::map<std::string, ChartSeries> by_config;
  std::vector<std::string> order;
  std::set<int64_t> contexts;
  BarChart bars;
  for (const auto& c : r["cells"]) {
    std::string key = c["model"].get<std::string>() + " " + c["cache_type"].get<std::string>();
    if (c["batch"].get<int64_t>() != 1) key += " b" + std::to_string(c["batch"].get<int64_t>());
    if (!by_config.count(key)) {
      order.push_back(key);
      by_config[key].name = key;
      by_config[key].markers = true;
    }
    const double tps = c["decode_tokens_per_s"].get<double>();
    by_config[key].points.emplace_back(static_cast<double>(c["context"].get<int64_t>()), tps);
    contexts.insert(c["context"].get<int64_t>());
    bars.bars.push_back({key, tps, c.value("decode_tokens_per_s_min", tps), c.value("decode_tokens_per_s_max", tps)});
  }
  const std::string what = r["shape"].get<std::string>() + ", " + r["dtype"].get<std::string>() + ", " +
                           r["device"].get<std::string>();
  // One context gives no line to draw: a bar per configuration instead, with the repeats' range.
  if (contexts.size() == 1) {
    bars.title = "decode tokens/s at context " + std::to_string(*contexts.begin()) + " (" + what + ")";
    bars.y_label = "decode tokens/s (median, range)";
    return bars.svg();
  }
  Chart ch;
  ch.title = "decode tokens/s against context (" + what + ")";
  ch.x_label = "context (tokens, log scale)";
  ch.y_label = "decode tokens/s";
  ch.log_x = true;
  ch.y_from_zero = true;
  for (const auto& k : order) ch.series.push_back(by_config[k]);
  return ch.svg();
}

}  // namespace mha2mla::infer
