// Prefill and decode throughput of a SmolLM-135M-shaped model (random weights), fp32 and bf16.
// `bench_model --write-model DIR` saves the same model for the PyTorch eager comparison
// (bench/model_vs_pytorch.sh).
#include <benchmark/benchmark.h>

#include <cstring>
#include <map>

#include "infer/runtime.h"
#include "model/transformer.h"

using namespace mha2mla;

namespace {

nlohmann::json smollm_135m_config() {
  return {{"model_type", "llama"},         {"vocab_size", 49152},     {"hidden_size", 576},
          {"intermediate_size", 1536},     {"num_hidden_layers", 30}, {"num_attention_heads", 9},
          {"num_key_value_heads", 3},      {"rms_norm_eps", 1e-5},    {"rope_theta", 10000.0},
          {"max_position_embeddings", 2048}, {"tie_word_embeddings", true}, {"bos_token_id", 0},
          {"eos_token_id", 0},             {"torch_dtype", "float32"}};
}

model::Transformer& get_model(torch::ScalarType dtype) {
  static std::map<torch::ScalarType, model::Transformer> cache;
  auto it = cache.find(dtype);
  if (it != cache.end()) return it->second;
  auto cfg = io::ModelConfig::from_json(smollm_135m_config(), "smollm-135m");
  model::Transformer m(cfg, dtype);
  model::init_weights(*m, 0);
  m->eval();
  return cache.emplace(dtype, m).first->second;
}

torch::ScalarType dtype_of(int64_t code) { return code == 0 ? torch::kFloat32 : torch::kBFloat16; }

void BM_Prefill(benchmark::State& state) {
  torch::NoGradGuard ng;
  auto& m = get_model(dtype_of(state.range(0)));
  const int64_t T = state.range(1);
  auto ids = torch::randint(0, 49152, {1, T}, torch::kInt64);
  for (auto _ : state) {
    auto cache = m->make_cache(1);
    auto h = m->hidden(ids, cache.get());
    auto logits = m->logits(h.select(1, T - 1));  // generation needs only the last position's logits
    benchmark::DoNotOptimize(logits.data_ptr());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Decode(benchmark::State& state) {
  torch::NoGradGuard ng;
  auto& m = get_model(dtype_of(state.range(0)));
  const int64_t prompt = state.range(1), steps = 64;
  auto ids = torch::randint(0, 49152, {1, prompt}, torch::kInt64);
  for (auto _ : state) {
    state.PauseTiming();
    auto cache = m->make_cache(1);
    auto last = m->logits(m->hidden(ids, cache.get()).select(1, prompt - 1));
    state.ResumeTiming();
    for (int64_t i = 0; i < steps; ++i) {
      auto tok = last.argmax(-1).view({1, 1});
      last = m->logits(m->hidden(tok, cache.get()).select(1, 0));
    }
    benchmark::DoNotOptimize(last.data_ptr());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
}

// args: {dtype (0 = f32, 1 = bf16), prompt tokens}
BENCHMARK(BM_Prefill)->ArgNames({"bf16", "T"})->Args({0, 128})->Args({1, 128})->Args({0, 512})->Args({1, 512})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_Decode)->ArgNames({"bf16", "prompt"})->Args({0, 128})->Args({1, 128})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace

int main(int argc, char** argv) {
  infer::init_runtime();  // threads and allocator, as the mha2mla binary sets them
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--write-model") == 0) {
      auto& m = get_model(torch::kFloat32);
      model::save_model(*m, argv[i + 1]);
      std::printf("wrote %s\n", argv[i + 1]);
      return 0;
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
