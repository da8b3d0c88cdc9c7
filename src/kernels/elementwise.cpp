#include "kernels/elementwise.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "kernels/cpu_kernels.h"
#include "kernels/elementwise_args.h"
#include "kernels/scalar_convert.h"
#include "kernels/storage_dtype.h"

namespace mha2mla::kernels {

namespace {

// Rows of a [..., D] tensor per parallel task: enough work to pay for a thread.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

// The fused rows win where libtorch's dispatch dominates (decode, a few rows), and the scalar ones lose to its
// vectorised kernels on a prompt (512-token prefill: 12 % slower overall), which therefore keeps them.
constexpr int64_t kFusedMaxRows = 64;

// The fused ops' variant: the AVX2 rows serve every CPU with AVX2 (AVX-512 ones included), the portable
// loops the others (they beat libtorch's dispatch at decode, unlike the portable GEMV).
Variant elementwise_variant(Variant v) {
  if (v == Variant::Auto) {
    v = resolve_variant(v);
    return v == Variant::Reference ? Variant::Generic : v;
  }
  return resolve_variant(v);
}

}  // namespace

namespace generic {

void silu_mul_span(DType t, const void* g, const void* u, void* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = load_elem(g, i, t);
    store_elem(y, i, t, round_to_storage(v / (1.f + std::exp(-v)), t) * load_elem(u, i, t));
  }
}

void rms_norm_row(DType t, const void* x, const void* w, void* y, int64_t D, float eps) {
  // f64 sum: a sequential f32 sum drifts from libtorch's blocked one by ~D ulps.
  double ss = 0.0;
  for (int64_t i = 0; i < D; ++i) {
    const float v = load_elem(x, i, t);
    ss += static_cast<double>(v * v);
  }
  const float var = static_cast<float>(ss / static_cast<double>(D));
  const float inv = 1.f / std::sqrt(var + eps);
  for (int64_t i = 0; i < D; ++i) store_elem(y, i, t, load_elem(w, i, t) * round_to_storage(load_elem(x, i, t) * inv, t));
}

}  // namespace generic

void rope_row(DType t, const void* x, const void* cos, const void* sin, void* y, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) {
    // rotate_half: (-x[h..D), x[0..h)); negation is exact, so only the products and the sum round.
    const float rot = i < h ? -load_elem(x, i + h, t) : load_elem(x, i - h, t);
    const float a = round_to_storage(load_elem(x, i, t) * load_elem(cos, i, t), t);
    const float b = round_to_storage(rot * load_elem(sin, i, t), t);
    store_elem(y, i, t, a + b);
  }
}

bool elementwise_applies(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return x.defined() && x.device().is_cpu() &&
         (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kFloat16) &&
         !(torch::GradMode::is_enabled() && x.requires_grad());
}

// ---------------------------------------------------------------------------------------------- RMSNorm

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto xf = x.to(torch::kFloat32);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * torch::rsqrt(var + eps);
  return w * xf.to(x.scalar_type());
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps, Variant variant) {
  const int64_t D = x.dim() > 0 ? x.size(-1) : 0;
  variant = elementwise_variant(variant);
  if (variant == Variant::Reference || !elementwise_applies(x) || !elementwise_applies(w) ||
      w.scalar_type() != x.scalar_type() || w.dim() != 1 || w.size(0) != D || D == 0 || x.numel() / D > kFusedMaxRows)
    return rms_norm_reference(x, w, eps);
  auto xc = x.contiguous();
  auto wc = w.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t rows = xc.numel() / D;
  const DType t = storage_dtype(x.scalar_type());
  const int64_t es = static_cast<int64_t>(xc.element_size());
  const char* xp = static_cast<const char*>(xc.data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  const RmsNormRow row = cpu_kernels(variant).rows.rms_norm;
  for (int64_t r = 0; r < rows; ++r)  // a few rows of at most a few thousand values: one thread
    row(t, xp + r * D * es, wc.data_ptr(), yp + r * D * es, D, static_cast<float>(eps));
  return y;
}

// ---------------------------------------------------------------------------------------------- SiLU * up

torch::Tensor silu_mul_reference(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate.to(torch::kFloat32)).to(gate.scalar_type()) * up;
}

torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up, Variant variant) {
  // Autograd (training) and prompts keep libtorch's own op. For bf16 it rounds inside silu as well (exp, 1 + e and the
  // quotient each go through bf16 in libtorch 1.13), so it sits a few units from the single rounding here.
  // libtorch 1.13 has no f16 silu on the CPU: there silu runs in f32 and is rounded once, as the kernels round it.
  variant = elementwise_variant(variant);
  if (variant == Variant::Reference || !elementwise_applies(gate) || !elementwise_applies(up) ||
      up.scalar_type() != gate.scalar_type() || up.sizes() != gate.sizes() ||
      gate.numel() > kFusedMaxRows * gate.size(-1))
    return gate.scalar_type() == torch::kFloat16 && gate.device().is_cpu() ? silu_mul_reference(gate, up)
                                                                            : torch::silu(gate) * up;
  auto g = gate.contiguous(), u = up.contiguous();
  auto y = torch::empty_like(g);
  const int64_t n = g.numel();
  const DType t = storage_dtype(g.scalar_type());
  const int64_t es = static_cast<int64_t>(g.element_size());
  const SiluMulSpan span = cpu_kernels(variant).rows.silu_mul;
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
    span(t, static_cast<const char*>(g.data_ptr()) + i0 * es, static_cast<const char*>(u.data_ptr()) + i0 * es,
         static_cast<char*>(y.data_ptr()) + i0 * es, i1 - i0);
  });
  return y;
}

// ---------------------------------------------------------------------------------------------- RoPE

torch::Tensor rope_reference(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t h = x.size(-1) / 2;
  auto rotated = torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const bool shapes = x.dim() == 4 && x.size(-1) % 2 == 0 && cos.dim() == 3 && sin.sizes() == cos.sizes() &&
                      cos.size(0) == x.size(0) && cos.size(1) == x.size(2) && cos.size(2) == x.size(3);
  if (!shapes || !elementwise_applies(x) || cos.scalar_type() != x.scalar_type() ||
      sin.scalar_type() != x.scalar_type() || !cos.device().is_cpu() || !sin.device().is_cpu() ||
      x.size(0) * x.size(2) > kFusedMaxRows)
    return rope_reference(x, cos, sin);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  auto xs = x.stride(3) == 1 ? x : x.contiguous();
  auto c = cos.contiguous(), s = sin.contiguous();
  auto y = torch::empty_like(xs);  // keeps x's layout ([B, T, H, D] memory under a transposed view)
  const DType dt = storage_dtype(x.scalar_type());
  const int64_t es = static_cast<int64_t>(xs.element_size());
  const char* xp = static_cast<const char*>(xs.data_ptr());
  const char* cp = static_cast<const char*>(c.data_ptr());
  const char* sp = static_cast<const char*>(s.data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  const int64_t xb = xs.stride(0), xh = xs.stride(1), xt = xs.stride(2);
  const int64_t yb = y.stride(0), yh = y.stride(1), yt = y.stride(2);
  at::parallel_for(0, B * H * T, row_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * T), hh = r / T % H, t = r % T;
      rope_row(dt, xp + (b * xb + hh * xh + t * xt) * es, cp + (b * T + t) * D * es, sp + (b * T + t) * D * es,
               yp + (b * yb + hh * yh + t * yt) * es, D);
    }
  });
  return y;
}

}  // namespace mha2mla::kernels
