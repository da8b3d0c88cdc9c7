// The GEMV of a decode step against ggml's (llama.cpp's CPU backend) in one process, alternating: the 210
// matrices of a SmolLM-135M-shaped layer stack (q, k, v, o, gate, up, down of 30 layers), one row of x, each
// engine in one parallel region with a barrier between matrices (our decode step's GemvGroups; a ggml graph of
// mul_mat nodes on a thread pool of the same size). Built only when CMake is given MHA2MLA_LLAMA_CPP (a
// llama.cpp checkout built by bench/llama_cpp_vs.sh).
//
//   bench_gemv_vs_ggml [f32|bf16] [ROUNDS] [THREADS]      (defaults: f32, 16, the cores of this machine)
#include <omp.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "kernels/cpu_kernels.h"
#include "kernels/gemv.h"
#include "kernels/storage_dtype.h"

using namespace mha2mla;

int main(int argc, char** argv) {
  const std::string type = argc > 1 ? argv[1] : "f32";
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 16;
  const int threads = argc > 3 ? std::atoi(argv[3]) : static_cast<int>(std::thread::hardware_concurrency());
  if ((type != "f32" && type != "bf16") || rounds < 1 || threads < 1) {
    std::fprintf(stderr, "usage: bench_gemv_vs_ggml [f32|bf16] [ROUNDS >= 1] [THREADS >= 1]\n");
    return 2;
  }
  const bool bf = type == "bf16";
  at::set_num_threads(threads);
  const auto dt = bf ? torch::kBFloat16 : torch::kFloat32;

  // [out, in] of each matrix, layer by layer.
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int l = 0; l < 30; ++l)
    for (auto s : {std::pair<int64_t, int64_t>{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576},
                   {1536, 576}, {576, 1536}})
      shapes.push_back(s);
  torch::manual_seed(1);
  std::vector<torch::Tensor> ws;
  double bytes = 0;
  for (auto s : shapes) {
    ws.push_back(torch::randn({s.first, s.second}).to(dt));
    bytes += static_cast<double>(ws.back().numel() * ws.back().element_size());
  }
  const auto x576 = torch::randn({1, 576}), x1536 = torch::randn({1, 1536});
  const auto x576d = x576.to(dt), x1536d = x1536.to(dt);

  // ggml: the same weights in its tensors ([in, out] in its order), x in f32 as llama.cpp passes activations.
  ggml_init_params ip{static_cast<size_t>(bytes) + (size_t{64} << 20), nullptr, false};
  ggml_context* ctx = ggml_init(ip);
  ggml_tensor* gx576 = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 576, 1);
  ggml_tensor* gx1536 = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1536, 1);
  std::memcpy(gx576->data, x576.data_ptr(), 576 * sizeof(float));
  std::memcpy(gx1536->data, x1536.data_ptr(), 1536 * sizeof(float));
  ggml_cgraph* gf = ggml_new_graph_custom(ctx, 4096, false);
  std::vector<ggml_tensor*> gy;
  for (size_t i = 0; i < shapes.size(); ++i) {
    ggml_tensor* w = ggml_new_tensor_2d(ctx, bf ? GGML_TYPE_BF16 : GGML_TYPE_F32, shapes[i].second, shapes[i].first);
    std::memcpy(w->data, ws[i].data_ptr(), ws[i].numel() * ws[i].element_size());
    gy.push_back(ggml_mul_mat(ctx, w, shapes[i].second == 576 ? gx576 : gx1536));
    ggml_build_forward_expand(gf, gy.back());
  }
  auto tpp = ggml_threadpool_params_default(threads);
  ggml_threadpool* pool = ggml_threadpool_new(&tpp);
  ggml_cplan plan = ggml_graph_plan(gf, threads, pool);
  std::vector<uint8_t> work(plan.work_size + 64);
  plan.work_data = work.data();

  // Ours: one GemvGroup per matrix, run as model/decode_step.cpp runs them.
  std::vector<torch::Tensor> ys;
  std::vector<kernels::GemvGroup> groups(ws.size());
  const auto sd = kernels::storage_dtype(dt);
  for (size_t i = 0; i < ws.size(); ++i) {
    ys.push_back(torch::empty({1, ws[i].size(0)}, x576d.options()));
    groups[i].rows = kernels::cpu_kernels(kernels::Variant::Auto).gemv;
    groups[i].add(kernels::gemv_args(sd, 1, (ws[i].size(1) == 576 ? x576d : x1536d).data_ptr(), ws[i], nullptr,
                                     ys[i].data_ptr(), nullptr));
  }
  std::vector<std::atomic<int64_t>> next(ws.size());
  auto run_ours = [&] {
    for (size_t i = 0; i < ws.size(); ++i) next[i] = groups[i].next_start(threads);
#pragma omp parallel num_threads(threads)
    {
      const int tid = omp_get_thread_num(), team = omp_get_num_threads();
      for (size_t i = 0; i < ws.size(); ++i) {
        groups[i].run_team(tid, team, threads, next[i]);
#pragma omp barrier
      }
    }
  };
  auto run_ggml = [&] { ggml_graph_compute(gf, &plan); };

  run_ours();
  run_ggml();
  double worst = 0;  // both compute the same products: a check that the comparison is of the same work
  for (size_t i = 0; i < ws.size(); ++i) {
    auto g = torch::from_blob(gy[i]->data, {1, shapes[i].first}, torch::kFloat32);
    worst = std::max(worst, ((g - ys[i].to(torch::kFloat32)).abs().max() / g.abs().max()).item<double>());
  }
  using Clock = std::chrono::steady_clock;
  std::vector<double> t[2];
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < 2; ++k) {  // the order alternates each round
      const int which = (k + r) % 2;
      const auto t0 = Clock::now();
      which == 0 ? run_ours() : run_ggml();
      t[which].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
  for (auto& v : t) std::sort(v.begin(), v.end());
  const double ours = t[0][t[0].size() / 2], theirs = t[1][t[1].size() / 2];
  std::printf("%s, %d threads, %.0f MB of weights, %d rounds (max rel diff %.1e): mha2mla %.2f ms (%.1f GB/s), "
              "ggml %.2f ms (%.1f GB/s), ggml / mha2mla time %.2f\n",
              type.c_str(), threads, bytes / 1e6, rounds, worst, ours * 1e3, bytes / ours / 1e9, theirs * 1e3,
              bytes / theirs / 1e9, theirs / ours);
  ggml_threadpool_free(pool);
  ggml_free(ctx);
  return worst < (bf ? 2e-2 : 1e-4) ? 0 : 1;
}
