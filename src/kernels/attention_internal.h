#pragma once
// Shared by the attention front ends (attention.cpp, quant_attention.cpp); not a public interface.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>

#include <vector>

#include "kernels/attention_args.h"
#include "kernels/cpu_features.h"
#include "kernels/cpu_kernels.h"
#include "kernels/decode_splits.h"

namespace mha2mla::kernels {

Operand operand(const torch::Tensor& t);  // [B, H, rows, dim], last dim contiguous
// The SIMD kernels read rows: t itself when its last dim is contiguous, else a contiguous copy.
torch::Tensor rows_contiguous(const torch::Tensor& t);
// Bad arguments to a kernel front end: std::invalid_argument "kernels::FN: WHAT".
[[noreturn]] void fail_arg(const char* fn, const std::string& what);
// Whether every defined tensor of ts is on `device`.
bool all_on(const torch::Device& device, std::initializer_list<const torch::Tensor*> ts);
// The arguments of flash/decode_attention (fn: which, for errors) and of mla_decode_attention, checked as they
// check them, over tensors whose last dim is contiguous and `valid` contiguous; `out` is left unset. The
// tensors must outlive the arguments.
AttnArgs attention_args(const char* fn, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& valid, int64_t start, int64_t window, double scale);
AttnArgs mla_decode_args(const torch::Tensor& q_lat, const torch::Tensor& q_rope, const torch::Tensor& c,
                         const torch::Tensor& k_r, const torch::Tensor& valid, int64_t start, int64_t window,
                         double scale);
// The codes, scales (and zero points) of a quantized buffer as the kernels read them: [B, H, rows, .] tensors with
// rows contiguous, zero undefined for E4M3 codes; n_quant and the residual are the caller's (quant_attention.cpp).
QuantDesc code_desc(Codes codes, int64_t bits, int64_t group, bool per_channel, const torch::Tensor& data,
                    const torch::Tensor& scale, const torch::Tensor& zero);
// The arguments of quantized_decode_attention / quantized_mla_decode_attention over checked inputs. `a` points
// at k, v and k2 (so the struct is neither copied nor moved) and `keep` holds the contiguous copies they read.
struct QuantizedKV;
struct QuantArgs {
  AttnArgs a;
  QuantDesc k, v, k2;
  std::vector<torch::Tensor> keep;
  QuantArgs() = default;
  QuantArgs(const QuantArgs&) = delete;
  QuantArgs& operator=(const QuantArgs&) = delete;
};
void quantized_decode_args(QuantArgs& out, const torch::Tensor& q, const QuantizedKV& k, const QuantizedKV& v,
                           const torch::Tensor& valid, int64_t start, int64_t window, double scale);
void quantized_mla_decode_args(QuantArgs& out, const torch::Tensor& q_lat, const torch::Tensor& q_rope,
                               const QuantizedKV& c, const QuantizedKV& k_r, const torch::Tensor& valid,
                               int64_t start, int64_t window, double scale);

// Runs f(item) for item in [0, n) on every intra-op thread, handing items out in order; callers put
// the most expensive items first so that the threads finish together.
template <class F>
void run_items(int64_t n, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1)) < n;) f(i);
  });
}
// Merges the per-split partial softmaxes of one (batch, group): part [nsplit][R][Dv + 2] (m, l, acc), into
// out [R][Dv] of storage type t, splits in order. o is f32 scratch of Dv values.
void merge_partials(const float* part, int64_t nsplit, int64_t R, int64_t Dv, DType t, void* out, float* o);

// Split-KV decoding: `a` filled except `out`; returns [B, Hq, T, Dv] in opt's dtype.
torch::Tensor run_decode(AttnArgs& a, const AttnKernels& kern, const torch::TensorOptions& opt);
// The same on a CUDA device (pointers in `a` on opt's device); undefined when this build or these shapes have
// no CUDA kernel, and the caller takes its reference.
torch::Tensor run_decode_cuda(AttnArgs& a, const torch::TensorOptions& opt);
// Records that a decode call took its reference, or the CPU kernels (last_decode_kernel()).
void note_reference_decode();
void note_cpu_decode();

// Where an attention call runs, decided here for every front end (flash, decode, MLA, quantized): the libtorch
// reference when the variant is Reference or the operands are on neither the CPU nor all on q's CUDA device;
// else that device, with the CPU variant resolved (Auto -> what the CPU and MHA2MLA_KERNELS / --kernels allow).
struct Route {
  enum Kind { Reference, Cpu, Cuda } kind;
  Variant variant;  // Cpu: the resolved variant
};
Route route(Variant v, const torch::Tensor& q, std::initializer_list<const torch::Tensor*> operands);

// A decode call by its route: the CPU's split-KV kernels, or the CUDA kernel. A route of Reference, and a CUDA
// device with no kernel for these shapes, run `reference` and say so in last_decode_kernel() (the front ends
// call run_reference_decode directly where they have no arguments to build).
template <class Reference>
torch::Tensor run_reference_decode(const Reference& reference);
template <class Reference>
torch::Tensor run_routed_decode(const Route& r, AttnArgs& a, const torch::TensorOptions& opt, const Reference& reference);

template <class Reference>
torch::Tensor run_reference_decode(const Reference& reference) {
  note_reference_decode();
  return reference();
}

template <class Reference>
torch::Tensor run_routed_decode(const Route& r, AttnArgs& a, const torch::TensorOptions& opt, const Reference& reference) {
  if (r.kind == Route::Cpu) return run_decode(a, *cpu_kernels(r.variant).attn, opt);
  if (r.kind == Route::Cuda)
    if (auto out = run_decode_cuda(a, opt); out.defined()) return out;
  return run_reference_decode(reference);
}

}  // namespace mha2mla::kernels
