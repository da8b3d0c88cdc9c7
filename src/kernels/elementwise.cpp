#include "kernels/elementwise.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>

#include "kernels/elementwise_args.h"
#include "kernels/storage_dtype.h"

namespace mha2mla::kernels {

namespace {

// Calls f with a null pointer of the C++ type that stores x's dtype (f32, bf16 or f16).
template <typename F>
void with_type(torch::ScalarType t, F&& f) {
  if (t == torch::kFloat32) f(static_cast<float*>(nullptr));
  else if (t == torch::kBFloat16) f(static_cast<c10::BFloat16*>(nullptr));
  else f(static_cast<c10::Half*>(nullptr));
}

// Rounds through the storage type T, as a libtorch op that writes a T tensor does.
template <typename T>
inline float round_to(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// Rows of a [..., D] tensor per parallel task: enough work to pay for a thread.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

// The loops below are scalar: they win where libtorch's dispatch dominates (decode, a few rows), and lose to
// its vectorised kernels on a prompt (512-token prefill: 12 % slower overall), which therefore keeps them.
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

bool use_avx2(Variant v) { return v == Variant::Avx2 || v == Variant::Avx512 || v == Variant::Avx512Bf16; }

}  // namespace

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
  if (use_avx2(variant)) {
    const DType t = storage_dtype(x.scalar_type());
    const int64_t es = static_cast<int64_t>(xc.element_size());
    const char* xp = static_cast<const char*>(xc.data_ptr());
    char* yp = static_cast<char*>(y.data_ptr());
    for (int64_t r = 0; r < rows; ++r)  // a few rows of at most a few thousand values: one thread
      avx2::rms_norm_row(t, xp + r * D * es, wc.data_ptr(), yp + r * D * es, D, static_cast<float>(eps));
    return y;
  }
  with_type(x.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = xc.data_ptr<T>();
    const T* wp = wc.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + r * D;
        T* yr = yp + r * D;
        // f64 sum: a sequential f32 sum drifts from libtorch's blocked one by ~D ulps.
        double ss = 0.0;
        for (int64_t i = 0; i < D; ++i) {
          const float v = static_cast<float>(xr[i]);
          ss += static_cast<double>(v * v);
        }
        const float var = static_cast<float>(ss / static_cast<double>(D));
        const float inv = 1.f / std::sqrt(var + static_cast<float>(eps));
        for (int64_t i = 0; i < D; ++i)
          yr[i] = static_cast<T>(static_cast<float>(wp[i]) * round_to<T>(static_cast<float>(xr[i]) * inv));
      }
    });
  });
  return y;
}

// ---------------------------------------------------------------------------------------------- SiLU * up

torch::Tensor silu_mul_reference(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate.to(torch::kFloat32)).to(gate.scalar_type()) * up;
}

torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up, Variant variant) {
  // Autograd (training) and prompts keep libtorch's own op. For bf16 it rounds inside silu as well (exp, 1 + e and the
  // quotient each go through bf16 in libtorch 1.13), so it sits a few units from the single rounding here.
  variant = elementwise_variant(variant);
  if (variant == Variant::Reference || !elementwise_applies(gate) || !elementwise_applies(up) ||
      up.scalar_type() != gate.scalar_type() || up.sizes() != gate.sizes() ||
      gate.numel() > kFusedMaxRows * gate.size(-1))
    return torch::silu(gate) * up;
  auto g = gate.contiguous(), u = up.contiguous();
  auto y = torch::empty_like(g);
  const int64_t n = g.numel();
  if (use_avx2(variant)) {
    const DType t = storage_dtype(g.scalar_type());
    const int64_t es = static_cast<int64_t>(g.element_size());
    at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      avx2::silu_mul_span(t, static_cast<const char*>(g.data_ptr()) + i0 * es,
                          static_cast<const char*>(u.data_ptr()) + i0 * es, static_cast<char*>(y.data_ptr()) + i0 * es,
                          i1 - i0);
    });
    return y;
  }
  with_type(g.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* gp = g.data_ptr<T>();
    const T* up_ = u.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float v = static_cast<float>(gp[i]);
        yp[i] = static_cast<T>(round_to<T>(v / (1.f + std::exp(-v))) * static_cast<float>(up_[i]));
      }
    });
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
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), h = D / 2;
  auto xs = x.stride(3) == 1 ? x : x.contiguous();
  auto c = cos.contiguous(), s = sin.contiguous();
  auto y = torch::empty_like(xs);  // keeps x's layout ([B, T, H, D] memory under a transposed view)
  with_type(x.scalar_type(), [&](auto* tag) {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    const T_* xp = xs.data_ptr<T_>();
    const T_* cp = c.data_ptr<T_>();
    const T_* sp = s.data_ptr<T_>();
    T_* yp = y.data_ptr<T_>();
    const int64_t xb = xs.stride(0), xh = xs.stride(1), xt = xs.stride(2);
    const int64_t yb = y.stride(0), yh = y.stride(1), yt = y.stride(2);
    at::parallel_for(0, B * H * T, row_grain(D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / (H * T), hh = r / T % H, t = r % T;
        const T_* xr = xp + b * xb + hh * xh + t * xt;
        T_* yr = yp + b * yb + hh * yh + t * yt;
        const T_* cr = cp + (b * T + t) * D;
        const T_* sr = sp + (b * T + t) * D;
        for (int64_t i = 0; i < D; ++i) {
          // rotate_half: (-x[h..D), x[0..h)); negation is exact, so only the products and the sum round.
          const float rot = i < h ? -static_cast<float>(xr[i + h]) : static_cast<float>(xr[i - h]);
          const float a = round_to<T_>(static_cast<float>(xr[i]) * static_cast<float>(cr[i]));
          const float bsin = round_to<T_>(rot * static_cast<float>(sr[i]));
          yr[i] = static_cast<T_>(a + bsin);
        }
      }
    });
  });
  return y;
}

}  // namespace mha2mla::kernels
