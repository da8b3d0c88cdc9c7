#include "kernels/gemv.h"

#include <ATen/Parallel.h>

#include "kernels/gemv_args.h"
#include "kernels/scalar_convert.h"

namespace mha2mla::kernels {

namespace generic {
void gemv_rows(const GemvArgs& a, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const char* w = static_cast<const char*>(a.w) + o * a.w_stride * elem_size(a.dtype);
    const float bias = a.bias ? load_elem(a.bias, o, a.dtype) : 0.f;
    for (int64_t j = 0; j < a.n; ++j) {
      const char* x = static_cast<const char*>(a.x) + j * a.in * elem_size(a.dtype);
      float acc = 0.f;
      for (int64_t i = 0; i < a.in; ++i) acc += load_elem(w, i, a.dtype) * load_elem(x, i, a.dtype);
      store_elem(a.y, j * a.out + o, a.dtype, acc + bias);
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

torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& w, const torch::Tensor& b, Variant variant) {
  if (!gemv_applies(x_in, w, b)) return torch::linear(x_in, w, b);
  variant = resolve_variant(variant);
  if (variant == Variant::Reference) return torch::linear(x_in, w, b);
  auto x = x_in.contiguous();
  auto bias = b.defined() ? b.contiguous() : b;
  const int64_t in = w.size(1), out = w.size(0), n = x.numel() / in;
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());
  GemvArgs a;
  a.dtype = x.scalar_type() == torch::kFloat32 ? DType::F32 : x.scalar_type() == torch::kBFloat16 ? DType::BF16 : DType::F16;
  a.n = n, a.in = in, a.x = x.data_ptr(), a.w = w.data_ptr(), a.w_stride = w.stride(0);
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.y = y.data_ptr(), a.out = out;
  GemvRows f = variant == Variant::Avx512Bf16 ? avx512bf16::gemv_rows
               : variant == Variant::Avx512   ? avx512::gemv_rows
                                              : generic::gemv_rows;
  // Blocks of output features sized so each thread streams a large contiguous part of W.
  const int64_t grain = std::max<int64_t>(24, (1 << 16) / std::max<int64_t>(in, 1) / 24 * 24);
  at::parallel_for(0, out, grain, [&](int64_t o0, int64_t o1) { f(a, o0, o1); });
  return y;
}

}  // namespace mha2mla::kernels
