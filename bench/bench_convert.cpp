// Conversion speed on a Llama-2-7B-shaped model (32 layers, d = 4096, 32 heads, d_h = 128), r = 16, d_kv = 16.
// Weights are random, generated per layer on the fly (with a decaying spectrum, as trained projections have),
// so the 7B model never has to fit in memory. Also compares the randomized SVD's error with the exact one.
#include <benchmark/benchmark.h>

#include <chrono>

#include "convert/mla_convert.h"
#include "infer/runtime.h"

using namespace mha2mla;

namespace {

const convert::LayerShape kShape{4096, 32, 32, 128};

convert::AttnWeights layer_weights(uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto decay = torch::exp(-torch::arange(kShape.hidden, torch::kFloat32) / (kShape.hidden / 6.0)) + 0.05;
  auto mat = [&](int64_t rows) {
    return at::normal(0.0, 0.02, {rows, kShape.hidden}, gen, torch::TensorOptions()) * decay.unsqueeze(0);
  };
  return {mat(kShape.n_h * kShape.d_h), {}, mat(kShape.n_kv * kShape.d_h), {}, mat(kShape.n_kv * kShape.d_h), {}};
}

convert::ConvertOptions options(convert::SvdAlgo algo) {
  convert::ConvertOptions o;
  o.rope = convert::RopeStrategy::High;  // the weight path: selection cost is negligible for every strategy
  o.rope_dims = 16;
  o.dkv = 16;
  o.svd = "joint";
  o.algo = algo;
  return o;
}

void BM_Convert7B(benchmark::State& state) {
  const int64_t layers = state.range(0);
  auto sel = convert::select_frequencies(convert::RopeStrategy::High, 16, 128, layers, 32);
  double k_err = 0, v_err = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    double gen_s = 0;
    for (int64_t l = 0; l < layers; ++l) {
      auto g0 = std::chrono::steady_clock::now();
      auto w = layer_weights(static_cast<uint64_t>(l));
      gen_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
      auto out = convert::convert_layer(w, kShape, sel[l], options(convert::SvdAlgo::Auto));
      k_err += out.k_err;
      v_err += out.v_err;
      benchmark::DoNotOptimize(out.tensors.data());
    }
    double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.SetIterationTime(total);
    state.counters["weight_gen_s"] = gen_s;
    state.counters["convert_s"] = total - gen_s;
  }
  state.counters["mean_k_rel_err"] = k_err / static_cast<double>(layers * state.iterations());
  state.counters["mean_v_rel_err"] = v_err / static_cast<double>(layers * state.iterations());
}
BENCHMARK(BM_Convert7B)->Arg(32)->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);

// One layer, exact vs randomized SVD: the randomized error must be within 1% of the exact one.
void BM_RandomizedVsExact(benchmark::State& state) {
  auto sel = convert::select_frequencies(convert::RopeStrategy::High, 16, 128, 1, 32);
  auto w = layer_weights(0);
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    auto exact = convert::convert_layer(w, kShape, sel[0], options(convert::SvdAlgo::Exact));
    auto t1 = std::chrono::steady_clock::now();
    auto rnd = convert::convert_layer(w, kShape, sel[0], options(convert::SvdAlgo::Randomized));
    auto t2 = std::chrono::steady_clock::now();
    state.counters["exact_s"] = std::chrono::duration<double>(t1 - t0).count();
    state.counters["randomized_s"] = std::chrono::duration<double>(t2 - t1).count();
    state.counters["exact_k_err"] = exact.k_err;
    state.counters["randomized_k_err"] = rnd.k_err;
    state.counters["exact_v_err"] = exact.v_err;
    state.counters["randomized_v_err"] = rnd.v_err;
    state.counters["k_err_excess_pct"] = 100.0 * (rnd.k_err / exact.k_err - 1.0);
    state.counters["v_err_excess_pct"] = 100.0 * (rnd.v_err / exact.v_err - 1.0);
  }
}
BENCHMARK(BM_RandomizedVsExact)->Iterations(1)->Unit(benchmark::kSecond);

}  // namespace

int main(int argc, char** argv) {
  infer::init_runtime();  // threads and allocator, as the mha2mla binary sets them
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
