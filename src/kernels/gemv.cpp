#include "kernels/gemv.h"

#include <ATen/Parallel.h>

#include <atomic>

#include "kernels/cpu_kernels.h"
#include "kernels/gemv_args.h"
#include "kernels/scalar_convert.h"
#include "kernels/storage_dtype.h"

namespace mha2mla::kernels {

namespace generic {
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const char* w = static_cast<const char*>(a.w) + o * a.w_stride * elem_size(a.dtype);
    for (int64_t j = 0; j < a.n; ++j) {
      const char* x = static_cast<const char*>(a.x) + j * a.in * elem_size(a.dtype);
      float acc = 0.f;
      for (int64_t i = 0; i < a.in; ++i) acc += load_elem(w, i, a.dtype) * load_elem(x, i, a.dtype);
      store_output(a, j, o, acc);
    }
  }
}
}  // namespace generic

namespace {
bool kernel_dtype(torch::ScalarType t) {
  return t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16;
}
}  // namespace

bool gemv_applies(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (!x.defined() || !w.defined() || x.dim() < 1 || w.dim() != 2 || x.size(-1) != w.size(1)) return false;
  if (!x.device().is_cpu() || !w.device().is_cpu() || !kernel_dtype(x.scalar_type()) ||
      w.scalar_type() != x.scalar_type())
    return false;
  if (b.defined() && (b.scalar_type() != x.scalar_type() || b.dim() != 1 || b.size(0) != w.size(0) ||
                      !b.device().is_cpu()))
    return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad())))
    return false;
  const int64_t in = w.size(1);
  const int64_t rows = in ? x.numel() / in : 0;
  return rows >= 1 && rows <= kGemvMaxRows && w.stride(1) == 1 && in > 0;
}

torch::Tensor linear_reference(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return torch::linear(x, w, b);
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, Variant variant) {
  return linear_many(x, {w}, {b}, variant)[0];
}

bool linear_matmul_widens(torch::ScalarType t) {
  // libtorch 1.13 has no f16 GEMM on the CPU at all ("addmm_impl_cpu_" not implemented for 'Half'), and a fast
  // bf16 one (oneDNN) only on AVX-512 CPUs. The CPU's capability decides, not the variant a cap selects: the
  // cap chooses among our kernels, and this is libtorch's.
  return t == torch::kFloat16 || (t == torch::kBFloat16 && !cpu_has_avx512());
}

torch::Tensor linear_matmul(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, Variant variant) {
  const auto t = x.scalar_type();
  if (!x.device().is_cpu() || w.scalar_type() != t || !linear_matmul_widens(t) ||
      (t == torch::kBFloat16 && resolve_variant(variant) == Variant::Reference))
    return torch::linear(x, w, b);
  // Exact products of 16-bit values, summed in f32 and rounded once: what a 16-bit GEMM with f32 accumulation
  // computes, at f32 GEMM speed.
  auto f = [](const torch::Tensor& u) { return u.defined() ? u.to(torch::kFloat32) : u; };
  return torch::linear(f(x), f(w), f(b)).to(t);
}

torch::Tensor matmul(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != torch::kFloat16 || b.scalar_type() != torch::kFloat16 || !a.device().is_cpu())
    return torch::matmul(a, b);
  return torch::matmul(a.to(torch::kFloat32), b.to(torch::kFloat32)).to(torch::kFloat16);
}

GemvArgs gemv_args(DType t, int64_t n, const void* x, const torch::Tensor& w, const void* bias, void* y,
                   const void* residual) {
  GemvArgs a;
  a.dtype = t;
  a.n = n, a.in = w.size(1), a.x = x, a.w = w.data_ptr(), a.w_stride = w.stride(0);
  a.bias = bias, a.y = y, a.out = w.size(0), a.residual = residual;
  return a;
}

int64_t GemvGroup::threads(int64_t available) const {
  const int64_t in = args.empty() ? 1 : std::max<int64_t>(args[0].in, 1);
  const int64_t grain = std::max<int64_t>(24, (1 << 16) / in / 24 * 24);
  return std::max<int64_t>(1, std::min<int64_t>(available, total() / grain));
}

int64_t GemvGroup::tail_start(int64_t threads) const { return share(threads) * threads; }

void GemvGroup::run_rows(int64_t o0, int64_t o1) const {
  for (size_t i = 0; i < args.size(); ++i) {
    const int64_t lo = std::max(o0, start[i]), hi = std::min(o1, start[i + 1]);
    if (lo < hi) rows(args[i], lo - start[i], hi - start[i]);
  }
}

void GemvGroup::run_thread(int64_t t, int64_t threads, std::atomic<int64_t>& next) const {
  const int64_t n = total(), rows_each = share(threads);
  const int64_t chunk = std::max<int64_t>(8, (1 << 15) / std::max<int64_t>(args.empty() ? 1 : args[0].in, 1));
  run_rows(t * rows_each, (t + 1) * rows_each);
  for (int64_t o; (o = next.fetch_add(chunk)) < n;) run_rows(o, std::min(n, o + chunk));
}

namespace {

// linear_many(), with `residual` (when defined) added to the single matrix's output.
std::vector<torch::Tensor> run_linear(const torch::Tensor& x_in, const std::vector<torch::Tensor>& ws,
                                      const std::vector<torch::Tensor>& bs, const torch::Tensor& residual,
                                      Variant variant) {
  auto bias_of = [&](size_t i) { return i < bs.size() ? bs[i] : torch::Tensor(); };
  bool fused = !ws.empty();
  for (size_t i = 0; i < ws.size() && fused; ++i) fused = gemv_applies(x_in, ws[i], bias_of(i));
  if (fused && residual.defined()) {
    auto sizes = x_in.sizes().vec();
    sizes.back() = ws[0].size(0);
    fused = ws.size() == 1 && residual.device().is_cpu() && residual.scalar_type() == x_in.scalar_type() &&
            residual.sizes() == sizes && !(torch::GradMode::is_enabled() && residual.requires_grad());
  }
  if (fused) variant = resolve_variant(variant);
  std::vector<torch::Tensor> ys;
  if (!fused || variant == Variant::Reference) {
    for (size_t i = 0; i < ws.size(); ++i) ys.push_back(linear_matmul(x_in, ws[i], bias_of(i), variant));
    if (residual.defined()) ys[0] = ys[0] + residual;
    return ys;
  }
  auto res = residual.defined() ? residual.contiguous() : residual;
  auto x = x_in.contiguous();
  const int64_t in = x.size(-1), n = x.numel() / in;
  GemvGroup group;
  group.rows = cpu_kernels(variant).gemv;
  std::vector<torch::Tensor> biases;  // keeps contiguous copies alive
  for (size_t i = 0; i < ws.size(); ++i) {
    const auto& w = ws[i];
    auto bias = bias_of(i).defined() ? bias_of(i).contiguous() : torch::Tensor();
    auto sizes = x.sizes().vec();
    sizes.back() = w.size(0);
    ys.push_back(torch::empty(sizes, x.options()));
    group.add(gemv_args(storage_dtype(x.scalar_type()), n, x.data_ptr(), w, bias.defined() ? bias.data_ptr() : nullptr,
                        ys.back().data_ptr(), res.defined() ? res.data_ptr() : nullptr));
    biases.push_back(bias);
  }
  const int64_t threads = group.threads(at::get_num_threads());
  if (threads <= 1) {
    group.run_rows(0, group.total());
  } else {
    // One parallel region for all the matrices (q, k and v; gate and up): the threads meet once, not per matrix.
    std::atomic<int64_t> next{group.tail_start(threads)};
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) group.run_thread(t, threads, next);
    });
  }
  return ys;
}

}  // namespace

std::vector<torch::Tensor> linear_many(const torch::Tensor& x, const std::vector<torch::Tensor>& ws,
                                       const std::vector<torch::Tensor>& bs, Variant variant) {
  return run_linear(x, ws, bs, {}, variant);
}

torch::Tensor linear_add(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                         const torch::Tensor& residual, Variant variant) {
  return run_linear(x, {w}, {b}, residual, variant)[0];
}

}  // namespace mha2mla::kernels
