#pragma once
// Weight-bound linear layer for decoding: y = x W^T (+ b) with few rows of x, streaming W once.
#include <torch/torch.h>

#include <atomic>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/gemv_args.h"

namespace mha2mla::kernels {

// Most rows of x the GEMV kernel takes; more rows are a matmul and go to torch::linear.
constexpr int64_t kGemvMaxRows = 8;

// True when linear() runs the GEMV kernel for these arguments (CPU, shared dtype f32/bf16/f16,
// at most kGemvMaxRows rows, no autograd needed).
bool gemv_applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// x [..., in], w [out, in] (rows may be strided), b [out] or undefined -> [..., out] in x's dtype;
// f32 accumulation. Falls back to linear_matmul() when gemv_applies() is false.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                     Variant variant = Variant::Auto);

// linear() of one x by several matrices (q, k and v; gate and up) in one parallel region, so the threads
// synchronise once; the same results as separate linear() calls. Biases may be omitted or undefined.
std::vector<torch::Tensor> linear_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws,
                                       const std::vector<torch::Tensor>& bs, Variant variant = Variant::Auto);

// linear(x, w, b) + residual, rounded as those two ops round (the product to x's dtype, then the sum): a
// decoder layer's residual connection, added as each output is stored instead of by one more op.
torch::Tensor linear_add(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                         const torch::Tensor& residual, Variant variant = Variant::Auto);

// linear() where the GEMV kernel does not apply (prompts, autograd): torch::linear, except where
// linear_matmul_widens(): there x, W and b are widened to f32 and the result rounded once to the input type.
// Variant::Reference keeps torch::linear for bf16 (libtorch's own bf16 GEMM); f16 has none to keep.
torch::Tensor linear_matmul(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                            Variant variant = Variant::Auto);

// True where linear_matmul() widens a CPU GEMM of dtype t to f32: f16 always (libtorch 1.13 has no f16 CPU
// GEMM), bf16 on CPUs without AVX-512 (libtorch's bf16 GEMM there runs at about 5 GFLOP/s against 140 in f32
// on 2 Zen 3 cores). Decided by the CPU, whichever kernel variant is capped.
bool linear_matmul_widens(torch::ScalarType t);

// torch::matmul, except f16 on the CPU, where libtorch 1.13 has no mm or bmm at all: there both sides are widened
// to f32 and the result rounded once to f16, as linear_matmul() does. For the attention paths that run on
// libtorch ops (the reference kernels, materialised MLA, training).
torch::Tensor matmul(const torch::Tensor& a, const torch::Tensor& b);

// The GEMV arguments for y [n, out] = x [n, in] W^T (+ bias) (+ residual), W [out, in] with rows strided.
GemvArgs gemv_args(DType t, int64_t n, const void* x, const torch::Tensor& w, const void* bias, void* y,
                   const void* residual);

// Matrices that read one x, their output rows stacked (q, k and v; gate and up), shared out among threads that
// the caller owns: each thread streams a contiguous share of the first three quarters of the rows, then takes
// chunks of the rest from a shared counter as it comes free, so a thread that started late or runs slower
// does not keep the others waiting at the join.
struct GemvGroup {
  GemvRows rows = nullptr;
  std::vector<GemvArgs> args;
  std::vector<int64_t> start{0};  // matrix i owns stacked rows [start[i], start[i + 1])

  void add(const GemvArgs& a) {
    args.push_back(a);
    start.push_back(start.back() + a.out);
  }
  int64_t total() const { return start.back(); }
  // Threads worth starting out of `available`: each needs enough rows to pay for its start.
  int64_t threads(int64_t available) const;
  // Where the shared counter starts for `threads` threads: the first row of the last quarter.
  int64_t tail_start(int64_t threads) const;
  // Thread t of `threads` (each calls it once): its share, then chunks from `next`.
  void run_thread(int64_t t, int64_t threads, std::atomic<int64_t>& next) const;
  // For a parallel region the caller owns, planned for `available` threads: where `next` starts, and the part
  // of member tid of a team of `team` (the shares of threads(available) threads, dealt out in turn, so a smaller
  // team than planned still covers every row).
  int64_t next_start(int64_t available) const { return tail_start(threads(available)); }
  void run_team(int64_t tid, int64_t team, int64_t available, std::atomic<int64_t>& next) const {
    const int64_t k = threads(available);
    for (int64_t s = tid; s < k; s += team) run_thread(s, k, next);
  }
  void run_rows(int64_t o0, int64_t o1) const;  // stacked rows [o0, o1)

 private:
  int64_t share(int64_t threads) const { return total() * 3 / 4 / threads; }  // rows each thread starts with
};

// torch::linear.
torch::Tensor linear_reference(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

}  // namespace mha2mla::kernels
