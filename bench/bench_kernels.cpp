// Kernels against their references, measured in the same process (the machine is shared, so only ratios
// are meaningful), with the machine's read bandwidth and matmul rate measured alongside. Reference and
// kernel runs alternate; each side reports its fastest run. The CPU kernels by default; with --device cuda
// the CUDA attention kernels against the libtorch reference on the GPU, and the GPU's own bandwidth.
//
//   bench_kernels [--quick] [--json] [--only prefill|decode|mla|mla_q4|quant|paged|gemv|model] [--device cuda]
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "infer/runtime.h"
#include "kernels/attention.h"
#include "kernels/gemv.h"
#include "kernels/paged_attention.h"
#include "kernels/quant_attention.h"
#include "model/attention.h"
#include "model/runtime_options.h"
#include "model/transformer.h"

using namespace mha2mla;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

torch::Device device = torch::kCPU;  // where the measured tensors live (--device)

// Waits for the device's queued work, so that a timed run ends when its kernels do.
void sync() {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Fastest of `reps` timed runs of each function, alternating between them.
std::vector<double> race(const std::vector<std::function<void()>>& fs, int reps, double min_time = 0.0) {
  std::vector<double> best(fs.size(), 1e30);
  for (auto& f : fs) f();  // warm-up
  sync();
  const double t_start = now_s();
  for (int r = 0; r < reps || now_s() - t_start < min_time; ++r) {
    for (size_t i = 0; i < fs.size(); ++i) {
      const double t0 = now_s();
      fs[i]();
      sync();
      best[i] = std::min(best[i], now_s() - t0);
    }
    if (r > 1000) break;
  }
  return best;
}

struct Row {
  std::string kernel, shape, dtype;
  double ref_ms, new_ms;
  double gbs = 0, gflops = 0;  // of the kernel
  std::string note;
};

std::vector<Row> rows;
bool json = false;

void report(const Row& r) {
  rows.push_back(r);
  if (json) return;
  std::printf("%-14s %-34s %-5s ref %9.3f ms  kernel %9.3f ms  x%6.2f", r.kernel.c_str(), r.shape.c_str(),
              r.dtype.c_str(), r.ref_ms, r.new_ms, r.ref_ms / r.new_ms);
  if (r.gbs > 0) std::printf("  %6.1f GB/s", r.gbs);
  if (r.gflops > 0) std::printf("  %7.1f GFLOP/s", r.gflops);
  if (!r.note.empty()) std::printf("  %s", r.note.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

const char* dname(torch::ScalarType t) {
  return t == torch::kFloat32 ? "f32" : t == torch::kBFloat16 ? "bf16" : "f16";
}

// --- machine -------------------------------------------------------------------------------------
double read_bw_gbs = 0, mm_gflops = 0;

void machine() {
  // 256 MiB, far beyond the CPU's caches; 2 GiB on a GPU, far beyond its L2.
  auto big = torch::ones({device.is_cuda() ? int64_t{512} << 20 : int64_t{64} << 20}, torch::TensorOptions(device));
  auto t = race({[&] { auto s = big.sum(); (void)s; }}, 5)[0];
  read_bw_gbs = big.numel() * 4.0 / t / 1e9;
  if (device.is_cuda()) {
    auto a = torch::randn({4096, 4096}, torch::TensorOptions(device)), b = torch::randn({4096, 4096}, torch::TensorOptions(device));
    auto tm = race({[&] { auto c = torch::mm(a, b); (void)c; }}, 5)[0];
    mm_gflops = 2.0 * 4096 * 4096 * 4096 / tm / 1e9;
    if (!json)
      std::printf("machine: %s, read bandwidth %.0f GB/s (sum of 2 GiB), f32 matmul %.0f GFLOP/s, CUDA kernels %s\n",
                  device.str().c_str(), read_bw_gbs, mm_gflops, kernels::cuda_kernels_built() ? "built" : "absent");
    return;
  }
  auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  auto tm = race({[&] { auto c = torch::mm(a, b); (void)c; }}, 5)[0];
  mm_gflops = 2.0 * 1024 * 1024 * 1024 / tm / 1e9;
  if (!json)
    std::printf("machine: %d threads, read bandwidth %.1f GB/s (sum of 256 MiB), f32 matmul %.1f GFLOP/s, kernels %s\n",
                at::get_num_threads(), read_bw_gbs, mm_gflops,
                kernels::variant_name(kernels::resolve_variant(kernels::Variant::Auto)).c_str());
}

// Today's path: grouped_attention with the additive mask the model builds.
torch::Tensor additive_mask(int64_t T, int64_t S, int64_t start, torch::ScalarType dt) {
  auto vis = kernels::visibility(T, S, start, {}, 0, torch::kCPU).view({1, 1, T, S});
  return torch::zeros({1, 1, T, S}).masked_fill(vis.logical_not(), -1e30).to(dt);
}

// --- prefill -------------------------------------------------------------------------------------
void prefill(bool quick) {
  const int64_t Hq = 9, Hkv = 3, D = 64;
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    for (int64_t T : quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 4096}) {
      torch::manual_seed(1);
      auto q = torch::randn({1, Hq, T, D}).to(dt), k = torch::randn({1, Hkv, T, D}).to(dt),
           v = torch::randn({1, Hkv, T, D}).to(dt);
      auto mask = additive_mask(T, T, 0, dt);
      torch::Tensor o;
      auto t = race({[&] { o = model::grouped_attention(q, k, v, mask, 0.125); },
                     [&] { o = kernels::flash_attention(q, k, v, 0, {}, 0, 0.125); }},
                    quick ? 1 : 2);
      const double flops = 4.0 * Hq * D * T * (T + 1) / 2;  // causal half of QK^T and PV
      report({"flash_prefill", "SmolLM layer T=" + std::to_string(T), dname(dt), t[0] * 1e3, t[1] * 1e3, 0,
              flops / t[1] / 1e9, "ref = model::grouped_attention"});
      if (T != 4096 || dt != torch::kBFloat16) continue;
      // The rest of a layer (projections and MLP, torch::linear as the model runs them) to project the
      // whole 30-layer prefill: today's attention vs the kernel.
      auto x = torch::randn({1, T, 576}).to(dt), xh = torch::randn({1, T, 1536}).to(dt);
      auto w_sq = torch::randn({576, 576}).to(dt), w_kv = torch::randn({192, 576}).to(dt),
           w_up = torch::randn({1536, 576}).to(dt), w_dn = torch::randn({576, 1536}).to(dt);
      auto tl = race({[&] {
                       for (auto* w : {&w_sq, &w_kv, &w_kv, &w_sq, &w_up, &w_up}) auto y = torch::linear(x, *w);
                       auto y = torch::linear(xh, w_dn);
                     }},
                     1)[0];
      char note[160];
      std::snprintf(note, sizeof note, "30 layers: linears %.1f s + attention %.1f s -> %.1f s (x%.1f)", 30 * tl,
                    30 * t[1], 30 * (tl + t[1]), (tl + t[0]) / (tl + t[1]));
      report({"prefill_proj", "SmolLM-135M T=4096 (projection)", dname(dt), 30 * (tl + t[0]) * 1e3,
              30 * (tl + t[1]) * 1e3, 0, 0, note});
    }
  }
  if (quick) return;
  // Where the reference cannot go: a 16K prompt, one layer (the reference would need ~19 GB of scores).
  const int64_t T = 16384;
  auto q = torch::randn({1, Hq, T, D}).to(torch::kBFloat16), k = torch::randn({1, Hkv, T, D}).to(torch::kBFloat16),
       v = torch::randn({1, Hkv, T, D}).to(torch::kBFloat16);
  auto tk = race({[&] { auto o = kernels::flash_attention(q, k, v, 0, {}, 0, 0.125); }}, 1)[0];
  const double flops = 4.0 * Hq * D * T * (T + 1) / 2;
  report({"flash_prefill", "SmolLM layer T=16384 (no ref)", "bf16", NAN, tk * 1e3, 0, flops / tk / 1e9,
          "30 layers: " + std::to_string(30 * tk) + " s"});
}

// --- decode --------------------------------------------------------------------------------------
void decode(bool quick) {
  const int64_t Hq = 9, Hkv = 3, D = 64;
  for (auto dt : {torch::kBFloat16, torch::kFloat32, torch::kFloat16}) {
    for (int64_t S : quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{512, 4096, 32768}) {
      torch::manual_seed(2);
      auto q = torch::randn({1, Hq, 1, D}).to(dt), k = torch::randn({1, Hkv, S, D}).to(dt),
           v = torch::randn({1, Hkv, S, D}).to(dt);
      torch::Tensor o;
      // The f32 reference: libtorch 1.13 has no f16 matmul on the CPU.
      auto t = race({[&] { o = kernels::attention_reference(q, k, v, S - 1, {}, 0, 0.125); },
                     [&] { o = kernels::decode_attention(q, k, v, S - 1, {}, 0, 0.125); }},
                    quick ? 5 : 20, 0.2);
      const double bytes = 2.0 * Hkv * S * D * q.element_size();
      char note[96];
      std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
      report({"decode_attn", "SmolLM layer S=" + std::to_string(S), dname(dt), t[0] * 1e3, t[1] * 1e3,
              bytes / t[1] / 1e9, 0, note});
    }
  }
}

// --- decode over a quantized cache (random codes: only the traffic matters here) -----------------
void quant_decode(bool quick) {
  const int64_t Hq = 9, Hkv = 3, D = 64, S = quick ? 8192 : 32768, R = 128, G = 64;  // the runtime's defaults
  const auto dt = torch::kBFloat16;
  for (int bits : {8, 4, 2}) {
    torch::manual_seed(5);
    auto make = [&](bool per_channel) {
      kernels::QuantizedKV kv;
      kv.bits = bits, kv.group = G, kv.per_channel = per_channel, kv.n_quant = S - R;
      kv.data = torch::randint(0, 256, {1, Hkv, S - R, (D * bits + 7) / 8}, torch::kUInt8);
      const int64_t rows = per_channel ? (S - R) / G : S - R, cols = per_channel ? D : (D + G - 1) / G;
      kv.scale = (torch::rand({1, Hkv, rows, cols}) * 0.01).to(torch::kFloat16);
      kv.zero = (torch::rand({1, Hkv, rows, cols}) - 0.5).to(torch::kFloat16);
      kv.residual = torch::randn({1, Hkv, R, D}).to(dt);
      return kv;
    };
    auto k = make(true), v = make(false);  // KIVI: keys per channel, values per token
    auto q = torch::randn({1, Hq, 1, D}).to(dt);
    auto bytes_of = [](const kernels::QuantizedKV& kv) {
      return static_cast<double>(kv.data.numel() + 2 * kv.scale.numel() * 2 + kv.residual.numel() * 2);
    };
    const double bytes = bytes_of(k) + bytes_of(v);
    // The same layer's bf16 cache through the bf16 kernel, for the int / bf16 time ratio.
    auto kb = torch::randn({1, Hkv, S, D}).to(dt), vb = torch::randn({1, Hkv, S, D}).to(dt);
    torch::Tensor o;
    auto t = race({[&] { o = kernels::quantized_decode_reference(q, k, v, S - 1, {}, 0, 0.125); },
                   [&] { o = kernels::quantized_decode_attention(q, k, v, S - 1, {}, 0, 0.125); },
                   [&] { o = kernels::decode_attention(q, kb, vb, S - 1, {}, 0, 0.125); }},
                  quick ? 3 : 10, 0.2);
    char note[128];
    std::snprintf(note, sizeof note, "int%d, %.0f%% of read bandwidth, int%d / bf16 kernel time %.2f", bits,
                  100.0 * bytes / t[1] / 1e9 / read_bw_gbs, bits, t[1] / t[2]);
    report({"quant_decode", "SmolLM layer S=" + std::to_string(S), "bf16", t[0] * 1e3, t[1] * 1e3,
            bytes / t[1] / 1e9, 0, note});
  }
}

// --- absorbed MLA decode -------------------------------------------------------------------------
void mla(bool quick) {
  const int64_t Hq = 9, Hkv = 3;
  // L = 128, r = 16: a wide latent; L = 24, r = 8: SmolLM-135M at -87.5 % (d_kv 8 per KV head).
  for (auto [L, r] : {std::pair<int64_t, int64_t>{128, 16}, {24, 8}})
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    for (int64_t S : quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 32768}) {
      torch::manual_seed(3);
      auto q_lat = torch::randn({1, Hq, 1, L}).to(dt), q_rope = torch::randn({1, Hq, 1, r}).to(dt);
      auto c = torch::randn({1, S, L}).to(dt), k_r = torch::randn({1, Hkv, S, r}).to(dt);
      torch::Tensor o;
      auto t = race({[&] { o = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.1); },
                     [&] { o = kernels::mla_decode_attention(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.1); }},
                    quick ? 5 : 20, 0.2);
      const double bytes = (S * L + Hkv * S * r) * static_cast<double>(c.element_size());
      const double flops = 2.0 * Hq * S * (2 * L + r);
      char note[96];
      std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
      report({"mla_decode", "Hq9 L" + std::to_string(L) + " r" + std::to_string(r) + " S=" + std::to_string(S), dname(dt), t[0] * 1e3, t[1] * 1e3,
              bytes / t[1] / 1e9, flops / t[1] / 1e9, note});
    }
  }
}

// --- the server's batched step: 8 sequences of S tokens in a block pool ------------------------------------------
// "ref": one contiguous decode call per sequence (the cache each sequence kept before the pool); "kernel": one paged
// call over all eight, blocks taken in random order, for each block size. SmolLM-135M's layer, bf16: MHA
// (9 query heads over 3 KV heads of 64) and MLA -87.5 % (latent 24, rotary 8 per KV head).
void paged(bool quick) {
  const int64_t Hq = 9, Hkv = 3, D = 64, L = 24, r = 8, B = 8;
  const auto dt = torch::kBFloat16;
  for (bool mla : {false, true})
    for (int64_t S : quick ? std::vector<int64_t>{2048} : std::vector<int64_t>{2048, 8192})
      for (int64_t bt : {64, 128, 256}) {
        torch::manual_seed(8);
        const int64_t per = (S + bt - 1) / bt, N = B * per;
        const int64_t H0 = mla ? 1 : Hkv, W0 = mla ? L : D, W1 = mla ? r : D;
        kernels::PagedBuffer b0, b1;
        b0.data = torch::randn({N, H0, bt, W0}).to(dt), b1.data = torch::randn({N, Hkv, bt, W1}).to(dt);
        auto ids = torch::randperm(N, torch::kInt32);
        std::vector<kernels::PagedSeq> seqs(B);
        for (int64_t b = 0; b < B; ++b) seqs[b].blocks = ids.data_ptr<int32_t>() + b * per, seqs[b].tokens = S;
        // The same tokens, contiguous per sequence.
        std::vector<torch::Tensor> c0, c1;
        for (int64_t b = 0; b < B; ++b) {
          auto sel = ids.narrow(0, b * per, per).to(torch::kInt64);
          auto flat = [&](const torch::Tensor& t) {
            auto g = t.index_select(0, sel);
            return g.permute({1, 0, 2, 3}).reshape({1, g.size(1), per * bt, g.size(3)}).narrow(2, 0, S).contiguous();
          };
          c0.push_back(flat(b0.data)), c1.push_back(flat(b1.data));
        }
        auto q1 = torch::randn({B, Hq, 1, mla ? L : D}).to(dt), q2 = torch::randn({B, Hq, 1, r}).to(dt);
        torch::Tensor o;
        auto t = race({[&] {
                         for (int64_t b = 0; b < B; ++b)
                           o = mla ? kernels::mla_decode_attention(q1.narrow(0, b, 1), q2.narrow(0, b, 1),
                                                                   c0[b].select(1, 0), c1[b], S - 1, {}, 0, 0.1)
                                   : kernels::decode_attention(q1.narrow(0, b, 1), c0[b], c1[b], S - 1, {}, 0, 0.125);
                       },
                       [&] {
                         o = mla ? kernels::paged_mla_decode_attention(q1, q2, b0, b1, seqs, bt, 0, 0.1)
                                 : kernels::paged_decode_attention(q1, b0, b1, seqs, bt, 0, 0.125);
                       }},
                      quick ? 5 : 20, 0.2);
        const double bytes = static_cast<double>(B) * S * (H0 * W0 + Hkv * W1) * 2;
        char note[96];
        std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
        report({"paged_decode", std::string(mla ? "MLA L24 r8" : "MHA Hkv3 D64") + " 8 seqs S=" + std::to_string(S) +
                                    " block " + std::to_string(bt),
                dname(dt), t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0, note});
      }
}

// --- int4 absorbed MLA decode against bf16, both read in place (the "ref" column is the bf16 kernel) ----------
// The runtime's int4 cache: latent per token (one group of 64 covers L = 24), rotary keys per channel in groups
// of 64 tokens, the newest 128 slots in bf16.
void mla_q4(bool quick) {
  const int64_t Hq = 9, Hkv = 3, L = 24, r = 8, G = 64, Rs = 128;
  for (int64_t S : quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 16384}) {
    torch::manual_seed(6);
    const auto dt = torch::kBFloat16;
    auto q_lat = torch::randn({1, Hq, 1, L}).to(dt), q_rope = torch::randn({1, Hq, 1, r}).to(dt);
    auto c = torch::randn({1, S, L}).to(dt), k_r = torch::randn({1, Hkv, S, r}).to(dt);
    auto make = [&](int64_t H, int64_t D, bool per_channel) {
      kernels::QuantizedKV kv;
      kv.bits = 4, kv.group = G, kv.per_channel = per_channel, kv.n_quant = S - Rs;
      kv.data = torch::randint(0, 256, {1, H, S - Rs, (D * 4 + 7) / 8}, torch::kUInt8);
      const int64_t rows = per_channel ? (S - Rs) / G : S - Rs, cols = per_channel ? D : (D + G - 1) / G;
      kv.scale = (torch::rand({1, H, rows, cols}) * 0.1).to(torch::kFloat16);
      kv.zero = (torch::rand({1, H, rows, cols}) - 0.5).to(torch::kFloat16);
      kv.residual = torch::randn({1, H, Rs, D}).to(dt);
      return kv;
    };
    auto cq = make(1, L, false), kq = make(Hkv, r, true);
    torch::Tensor o;
    auto t = race({[&] { o = kernels::mla_decode_attention(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.1); },
                   [&] { o = kernels::quantized_mla_decode_attention(q_lat, q_rope, cq, kq, S - 1, {}, 0, 0.1); }},
                  quick ? 5 : 40, 0.5);
    const double bytes = static_cast<double>(cq.data.numel() + kq.data.numel() + 2 * (cq.scale.numel() + cq.zero.numel() + kq.scale.numel() + kq.zero.numel()) + 2 * (cq.residual.numel() + kq.residual.numel()));
    char note[96];
    std::snprintf(note, sizeof note, "int4 / bf16 time %.2f, %.0f%% of read bandwidth", t[1] / t[0],
                  100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
    report({"mla_decode_int4", "Hq9 L24 r8 S=" + std::to_string(S) + " (ref: bf16)", "bf16", t[0] * 1e3, t[1] * 1e3,
            bytes / t[1] / 1e9, 0, note});
  }
}

// --- GEMV ----------------------------------------------------------------------------------------
void gemv(bool quick) {
  struct Shape {
    const char* name;
    int64_t in, out;
  };
  const std::vector<Shape> shapes = {{"q/o_proj", 576, 576}, {"k/v_proj", 576, 192}, {"gate/up", 576, 1536},
                                     {"down", 1536, 576},    {"lm_head", 576, 49152}};
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    for (const auto& s : shapes) {
      for (int64_t n : {1, 4}) {
        if (quick && n != 1) continue;
        torch::manual_seed(4);
        auto x = torch::randn({n, s.in}).to(dt), w = torch::randn({s.out, s.in}).to(dt);
        torch::Tensor y;
        auto t = race({[&] { y = torch::linear(x, w); }, [&] { y = kernels::linear(x, w, {}); }}, quick ? 20 : 50,
                      0.3);
        const double bytes = static_cast<double>(w.numel()) * w.element_size();
        char note[96];
        std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
        report({"gemv", std::string(s.name) + " " + std::to_string(s.out) + "x" + std::to_string(s.in) +
                            " rows=" + std::to_string(n),
                dname(dt), t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0, note});
      }
    }
  }
}

// --- GEMV from memory: 90 distinct gate/up-shaped matrices (~160 MB in bf16), as a decode step meets them;
// the cases above reuse one matrix, which then sits in the caches.
void gemv_dram(bool quick) {
  const int64_t count = quick ? 30 : 90, in = 576, out = 1536;
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    torch::manual_seed(4);
    std::vector<torch::Tensor> ws;
    for (int64_t i = 0; i < count; ++i) ws.push_back(torch::randn({out, in}).to(dt));
    auto x = torch::randn({1, in}).to(dt);
    torch::Tensor y;
    auto t = race({[&] { for (auto& w : ws) y = torch::linear(x, w); }, [&] { for (auto& w : ws) y = kernels::linear(x, w, {}); }},
                  quick ? 3 : 10, 0.3);
    const double bytes = static_cast<double>(count * out * in) * ws[0].element_size();
    char note[96];
    std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
    report({"gemv_dram", std::to_string(count) + " x " + std::to_string(out) + "x" + std::to_string(in) + " rows=1",
            dname(dt), t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0, note});
  }
}

// --- q, k and v of 30 SmolLM layers: three linear() calls against one linear_many() (one parallel region)
void gemv_many(bool quick) {
  const int64_t layers = 30, d = 576, kv = 192;
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    torch::manual_seed(6);
    std::vector<std::vector<torch::Tensor>> ws;
    for (int64_t l = 0; l < layers; ++l)
      ws.push_back({torch::randn({d, d}).to(dt), torch::randn({kv, d}).to(dt), torch::randn({kv, d}).to(dt)});
    auto x = torch::randn({1, d}).to(dt);
    std::vector<torch::Tensor> y;
    auto t = race({[&] {
                     for (auto& w : ws) y = {kernels::linear(x, w[0], {}), kernels::linear(x, w[1], {}), kernels::linear(x, w[2], {})};
                   },
                   [&] { for (auto& w : ws) y = kernels::linear_many(x, w, {}); }},
                  quick ? 5 : 20, 0.3);
    const double bytes = static_cast<double>(layers * (d * d + 2 * kv * d)) * x.element_size();
    char note[96];
    std::snprintf(note, sizeof note, "ref = 3 linear() calls; %.0f%% of read bandwidth", 100.0 * bytes / t[1] / 1e9 / read_bw_gbs);
    report({"linear_many", "30 x q,k,v 576/192x576 rows=1", dname(dt), t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0, note});
    // The server's batched step: 8 rows in one call (W streamed once) against two calls of 4 rows (twice).
    auto x8 = torch::randn({8, d}).to(dt);
    auto t8 = race({[&] {
                      for (auto& w : ws)
                        for (auto& m : w) y = {kernels::linear(x8.narrow(0, 0, 4), m, {}), kernels::linear(x8.narrow(0, 4, 4), m, {})};
                    },
                    [&] {
                      for (auto& w : ws)
                        for (auto& m : w) y = {kernels::linear(x8, m, {})};
                    }},
                   quick ? 5 : 20, 0.3);
    std::snprintf(note, sizeof note, "ref = 2 calls of 4 rows; %.0f%% of read bandwidth", 100.0 * bytes / t8[1] / 1e9 / read_bw_gbs);
    report({"gemv_rows8", "30 x q,k,v 576/192x576 rows=8", dname(dt), t8[0] * 1e3, t8[1] * 1e3, bytes / t8[1] / 1e9, 0, note});
  }
}

// --- whole-model decode (Dense layers and the LM head on the GEMV kernel vs torch::linear) -------
void model_decode(bool quick) {
  nlohmann::json cfg_json{{"model_type", "llama"},         {"vocab_size", 49152},     {"hidden_size", 576},
                          {"intermediate_size", 1536},     {"num_hidden_layers", 30}, {"num_attention_heads", 9},
                          {"num_key_value_heads", 9},      {"rms_norm_eps", 1e-5},    {"rope_theta", 10000.0},
                          {"max_position_embeddings", 2048}, {"tie_word_embeddings", true}, {"bos_token_id", 0},
                          {"eos_token_id", 0},             {"torch_dtype", "float32"}};
  auto cfg = io::ModelConfig::from_json(cfg_json, "smollm-135m-mha");
  for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
    model::Transformer m(cfg, dt);
    model::init_weights(*m, 0);
    m->eval();
    double weight_bytes = 0;  // read once per token (the tied embedding once, as the LM head)
    for (const auto& p : m->parameters()) weight_bytes += p.numel() * static_cast<double>(p.element_size());
    const int64_t prompt = 16, steps = quick ? 8 : 32;
    auto ids = torch::randint(0, 49152, {1, prompt}, torch::kInt64);
    auto run = [&](bool kernels_on) {
      if (kernels_on) unsetenv("MHA2MLA_KERNELS"); else setenv("MHA2MLA_KERNELS", "reference", 1);
      auto cache = m->make_cache(1);
      auto head = [&](const torch::Tensor& h) { return kernels::linear(h, m->lm_head_weight(), {}); };
      auto last = head(m->hidden(ids, cache.get()).select(1, prompt - 1));
      const double t0 = now_s();
      for (int64_t i = 0; i < steps; ++i) {
        auto tok = last.argmax(-1).view({1, 1});
        last = head(m->hidden(tok, cache.get()).select(1, 0));
      }
      return (now_s() - t0) / steps;
    };
    double best_ref = 1e30, best_new = 1e30;
    for (int r = 0; r < (quick ? 2 : 4); ++r) {
      best_ref = std::min(best_ref, run(false));
      best_new = std::min(best_new, run(true));
    }
    unsetenv("MHA2MLA_KERNELS");
    const double roof = weight_bytes / (read_bw_gbs * 1e9);
    char note[128];
    std::snprintf(note, sizeof note, "%.1f -> %.1f tok/s; roofline %.1f tok/s; ref %.0f%%, kernels %.0f%% of it",
                  1 / best_ref, 1 / best_new, 1 / roof, 100 * roof / best_ref, 100 * roof / best_new);
    report({"model_decode", "SmolLM-135M MHA, 16-token prompt", dname(dt), best_ref * 1e3, best_new * 1e3,
            weight_bytes / best_new / 1e9, 0, note});
  }
}

// --- CUDA: the attention kernels against the libtorch reference on the GPU ------------------------------------
void cuda_attention(bool quick) {
  const auto on = torch::TensorOptions(device);
  const auto bf16 = torch::kBFloat16;
  auto pct = [](double bytes, double t) {
    char note[64];
    std::snprintf(note, sizeof note, "%.0f%% of read bandwidth", 100.0 * bytes / t / 1e9 / read_bw_gbs);
    return std::string(note);
  };
  // MHA/GQA decode, a SmolLM-135M layer (9 heads over 3 KV heads, d_h 64).
  for (int64_t S : quick ? std::vector<int64_t>{32768} : std::vector<int64_t>{4096, 32768, 131072}) {
    torch::manual_seed(2);
    auto q = torch::randn({1, 9, 1, 64}, on).to(bf16), k = torch::randn({1, 3, S, 64}, on).to(bf16),
         v = torch::randn({1, 3, S, 64}, on).to(bf16);
    torch::Tensor o;
    auto t = race({[&] { o = kernels::attention_reference(q, k, v, S - 1, {}, 0, 0.125); },
                   [&] { o = kernels::decode_attention(q, k, v, S - 1, {}, 0, 0.125); }},
                  quick ? 5 : 20, 0.2);
    const double bytes = 2.0 * 3 * S * 64 * 2;
    report({"cuda_decode", "SmolLM layer S=" + std::to_string(S), "bf16", t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0,
            pct(bytes, t[1])});
  }
  // Absorbed MLA decode: SmolLM at -87.5 % (L 24, r 8, 9 heads), and the DeepSeek latent (L 512, r 64) with 16
  // and 128 query heads, FlashMLA's shape.
  struct M {
    int64_t B, Hq, Hkv, L, r, S;
  };
  const std::vector<M> mla = quick ? std::vector<M>{{1, 9, 3, 24, 8, 32768}, {1, 128, 1, 512, 64, 4096}}
                                   : std::vector<M>{{1, 9, 3, 24, 8, 32768}, {1, 9, 3, 24, 8, 131072},
                                                    {1, 16, 1, 512, 64, 32768}, {1, 128, 1, 512, 64, 4096},
                                                    {16, 128, 1, 512, 64, 4096}};
  for (const auto& m : mla) {
    torch::manual_seed(3);
    auto q_lat = torch::randn({m.B, m.Hq, 1, m.L}, on).to(bf16), q_rope = torch::randn({m.B, m.Hq, 1, m.r}, on).to(bf16);
    auto c = torch::randn({m.B, m.S, m.L}, on).to(bf16), k_r = torch::randn({m.B, m.Hkv, m.S, m.r}, on).to(bf16);
    torch::Tensor o;
    auto t = race({[&] { o = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, m.S - 1, {}, 0, 0.1); },
                   [&] { o = kernels::mla_decode_attention(q_lat, q_rope, c, k_r, m.S - 1, {}, 0, 0.1); }},
                  quick ? 5 : 20, 0.2);
    const double bytes = 2.0 * m.B * m.S * (m.L + m.Hkv * m.r);
    report({"cuda_mla", "B" + std::to_string(m.B) + " Hq" + std::to_string(m.Hq) + " L" + std::to_string(m.L) + " r" +
                            std::to_string(m.r) + " S=" + std::to_string(m.S),
            "bf16", t[0] * 1e3, t[1] * 1e3, bytes / t[1] / 1e9, 0, pct(bytes, t[1])});
  }
  // Prefill of a SmolLM layer: the reference materialises [9, T, T] scores.
  for (int64_t T : quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 16384}) {
    torch::manual_seed(4);
    auto q = torch::randn({1, 9, T, 64}, on).to(bf16), k = torch::randn({1, 3, T, 64}, on).to(bf16),
         v = torch::randn({1, 3, T, 64}, on).to(bf16);
    torch::Tensor o;
    auto t = race({[&] { o = kernels::attention_reference(q, k, v, 0, {}, 0, 0.125); },
                   [&] { o = kernels::flash_attention(q, k, v, 0, {}, 0, 0.125); }},
                  3, 0.2);
    const double flops = 2.0 * 2 * 9 * 64 * T * (T + 1) / 2.0;  // causal: QK and PV over the visible half
    report({"cuda_prefill", "SmolLM layer T=" + std::to_string(T), "bf16", t[0] * 1e3, t[1] * 1e3, 0,
            flops / t[1] / 1e9, ""});
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "bench_kernels: CPU kernels (src/kernels) against their references in the same process.\n"
          "  --quick        fewer shapes and repetitions\n"
          "  --json         one JSON object on stdout instead of the table\n"
          "  --only NAME    prefill | decode | mla | mla_q4 | quant | paged | gemv | model\n"
          "  --device cuda  the CUDA attention kernels against the reference on the GPU (instead of the CPU)\n"
          "MHA2MLA_THREADS sets the thread count; MHA2MLA_KERNELS=generic|avx2|avx512 caps the variant.\n");
      return 0;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--device" && i + 1 < argc) {
      try {
        device = model::parse_device(argv[++i]);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_kernels: %s\n", e.what());
        return 2;
      }
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "bench_kernels: unknown argument '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  infer::init_runtime();
  torch::NoGradGuard ng;
  machine();
  if (device.is_cuda()) {
    cuda_attention(quick);
    only = "none";  // the sections below measure CPU tensors
  }
  if (only.empty() || only == "gemv") gemv(quick);
  if (only.empty() || only == "gemv") gemv_dram(quick);
  if (only.empty() || only == "gemv") gemv_many(quick);
  if (only.empty() || only == "decode") decode(quick);
  if (only.empty() || only == "mla") mla(quick);
  if (only.empty() || only == "mla_q4") mla_q4(quick);
  if (only.empty() || only == "quant") quant_decode(quick);
  if (only.empty() || only == "paged") paged(quick);
  if (only.empty() || only == "model") model_decode(quick);
  if (only.empty() || only == "prefill") prefill(quick);
  if (json) {
    nlohmann::json j;
    j["threads"] = at::get_num_threads();
    j["read_bandwidth_gbs"] = read_bw_gbs;
    j["matmul_f32_gflops"] = mm_gflops;
    j["variant"] = kernels::variant_name(kernels::resolve_variant(kernels::Variant::Auto));
    for (const auto& r : rows)
      j["results"].push_back({{"kernel", r.kernel}, {"shape", r.shape}, {"dtype", r.dtype},
                              {"ref_ms", std::isnan(r.ref_ms) ? nlohmann::json() : nlohmann::json(r.ref_ms)},
                              {"kernel_ms", r.new_ms}, {"speedup", std::isnan(r.ref_ms) ? nlohmann::json() : nlohmann::json(r.ref_ms / r.new_ms)},
                              {"gb_per_s", r.gbs}, {"gflop_per_s", r.gflops}, {"note", r.note}});
    std::cout << j.dump(2) << "\n";
  }
  return 0;
}
