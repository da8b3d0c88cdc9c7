#include "model/quant.h"

#include <limits>

#include "kernels/quant_attention.h"
#include "util/error.h"

namespace mha2mla::model {
namespace {

constexpr double kF16Max = 65504.0;

// Pads the last dim to `to` by repeating its last value, so a group's min and max are unchanged.
torch::Tensor pad_repeat_last(const torch::Tensor& x, int64_t to) {
  const int64_t d = x.size(-1);
  if (d == to) return x;
  auto last = x.narrow(-1, d - 1, 1);
  auto sizes = x.sizes().vec();
  sizes.back() = to - d;
  return torch::cat({x, last.expand(sizes)}, -1);
}

torch::Tensor pack(const torch::Tensor& q, int bits) {  // q uint8-valued [.., D] -> [.., ceil(D·bits/8)]
  const int per = 8 / bits;
  if (per == 1) return q.to(torch::kUInt8);
  const int64_t d = q.size(-1), bytes = (d + per - 1) / per;
  auto qp = q.to(torch::kInt32);
  if (bytes * per != d) qp = torch::constant_pad_nd(qp, {0, bytes * per - d}, 0);
  auto sizes = qp.sizes().vec();
  sizes.back() = bytes;
  sizes.push_back(per);
  qp = qp.view(sizes);
  auto shifts = torch::arange(0, per * bits, bits, qp.options());
  return torch::bitwise_left_shift(qp, shifts).sum(-1).to(torch::kUInt8);
}

}  // namespace

namespace {

// HQQ's zero point for fixed scales (hqq's optimize_weights_proximal, in value space: x ≈ q·s + z). Each round
// quantizes with the current zero, treats the part of the error that the lp shrinkage keeps (p < 1: the large
// errors, outliers) as not the zero's to fix, and refits the zero to the rest by least squares; the shrinkage's
// threshold 1/β falls as β grows by κ each round. Each group keeps the zero of its lowest mean absolute error
// (hqq stops the whole tensor at the first round that does not improve it).
//   x [..] f32; s, s_safe: the scales spread over x's shape (s_safe: 1 where s is 0); z0: the min-max zeros,
//   one per group; spread: one value per group -> x's shape; group_sum: x's shape -> one sum per group.
template <class Spread, class GroupSum>
torch::Tensor hqq_zero(const torch::Tensor& x, const torch::Tensor& s, const torch::Tensor& s_safe,
                       const torch::Tensor& z0, double qmax, const Spread& spread, const GroupSum& group_sum) {
  constexpr double p = 0.7, kappa = 1.01;
  constexpr int kRounds = 20;
  double beta = 10.0;
  const torch::Tensor count = group_sum(torch::ones_like(x));
  torch::Tensor z = z0, best_z = z0;
  auto best_err = torch::full_like(z0, std::numeric_limits<float>::infinity());
  for (int i = 0; i < kRounds; ++i) {
    const torch::Tensor zx = spread(z);
    const torch::Tensor qs = ((x - zx) / s_safe).round().clamp(0, qmax) * s;
    const torch::Tensor d = x - qs - zx;  // x minus its dequantized value
    const torch::Tensor a = d.abs();
    const torch::Tensor err = group_sum(a) / count;
    const torch::Tensor better = err < best_err;
    if (!better.any().item<bool>()) break;
    best_err = torch::where(better, err, best_err);
    best_z = torch::where(better, z, best_z);
    const torch::Tensor e = d.sign() * torch::relu(a - (a + 1e-8).pow(p - 1) / beta);
    z = group_sum(x - e - qs) / count;
    beta *= kappa;
  }
  return best_z;
}

}  // namespace

torch::Tensor e4m3_codes(const torch::Tensor& x) {
  // Positive codes 0..126 are in increasing order of value, so a code is the number of midpoints between
  // neighbours that lie below |x|; a value on a midpoint goes to the even neighbour.
  static const torch::Tensor mid = [] {
    std::vector<float> m(126);
    for (int c = 0; c < 126; ++c)
      m[c] = 0.5f * (kernels::e4m3_value(static_cast<uint8_t>(c)) + kernels::e4m3_value(static_cast<uint8_t>(c + 1)));
    return torch::tensor(m);
  }();
  const auto mids = mid.to(x.device());
  const auto a = x.abs().clamp_max(kernels::kE4M3Max).contiguous();
  auto c = torch::bucketize(a, mids);  // midpoints strictly below a
  const auto at_mid = c.lt(126) & mids.index({c.clamp_max(125)}).eq(a) & c.remainder(2).eq(1);
  c = c + at_mid.to(c.scalar_type());
  return (c + x.lt(0).to(c.scalar_type()) * 128).to(torch::kUInt8);
}

void check_quantizer(CacheType type, QuantMethod method) {
  const auto& f = kernels::cache_format(type);
  check(f.kind != kernels::ValueKind::Fp8 || method == QuantMethod::MinMax,
        std::string("--cache-quant hqq fits zero points, which ") + f.name +
            " (symmetric, scale only) has none: use --cache-quant minmax");
}

QuantBlock quantize(const torch::Tensor& x, CacheType type, int64_t group, QuantAxis axis, QuantMethod method) {
  const auto& f = kernels::cache_format(type);
  check(f.kind != kernels::ValueKind::Float, std::string("quantize: ") + f.name + " is not a quantized cache type");
  check(x.dim() == 4, "quantize: expects [B, H, N, D]");
  check(group >= 1, "quantize: the group must hold at least one value");
  const bool fp8 = f.kind == kernels::ValueKind::Fp8;
  check_quantizer(type, method);
  auto xf = x.to(torch::kFloat32);
  const int64_t B = x.size(0), H = x.size(1), N = x.size(2), D = x.size(3);
  const int64_t ng = kernels::token_groups(D, group);
  torch::Tensor mn, mx;
  if (axis == QuantAxis::Token) {
    auto g = pad_repeat_last(xf, ng * group).view({B, H, N, ng, group});
    mn = g.amin(-1);
    mx = g.amax(-1);
  } else {
    check(N % group == 0, "quantize: per-channel blocks need a multiple of the group size in tokens");
    auto g = xf.view({B, H, N / group, group, D});
    mn = g.amin(3);
    mx = g.amax(3);
  }
  // One value per group -> x's shape, and x's shape -> one sum per group (the padding of a short last group of
  // channels adds nothing).
  auto spread = [&](const torch::Tensor& t) {
    if (axis == QuantAxis::Channel) return t.repeat_interleave(group, 2);
    return t.unsqueeze(-1).expand({B, H, N, ng, group}).reshape({B, H, N, ng * group}).narrow(-1, 0, D);
  };
  auto group_sum = [&](const torch::Tensor& t) {
    if (axis == QuantAxis::Channel) return t.view({B, H, N / group, group, D}).sum(3);
    return torch::constant_pad_nd(t, {0, ng * group - D}, 0).view({B, H, N, ng, group}).sum(-1);
  };
  if (fp8) {  // symmetric: the group's largest magnitude maps to 448; an all-zero group (scale 0) stores code 0
    auto scale = torch::maximum(mn.abs(), mx.abs()) / kernels::kE4M3Max;
    auto safe = spread(torch::where(scale > 0, scale, torch::ones_like(scale)));
    return {e4m3_codes(xf / safe).contiguous(), scale.contiguous(), torch::Tensor()};
  }
  const int bits = f.bits;
  const double qmax = (1 << bits) - 1;
  auto zero = mn.clamp(-kF16Max, kF16Max).to(torch::kFloat16);
  auto scale = ((mx - zero.to(torch::kFloat32)) / qmax).clamp(0, kF16Max).to(torch::kFloat16);
  auto s = scale.to(torch::kFloat32);
  auto s_safe = spread(torch::where(s > 0, s, torch::ones_like(s)));
  if (method == QuantMethod::Hqq)
    zero = hqq_zero(xf, spread(s), s_safe, zero.to(torch::kFloat32), qmax, spread, group_sum)
               .clamp(-kF16Max, kF16Max)
               .to(torch::kFloat16);
  auto q = ((xf - spread(zero.to(torch::kFloat32))) / s_safe).round().clamp(0, qmax);
  return {pack(q, bits).contiguous(), scale.contiguous(), zero.contiguous()};
}

torch::Tensor dequantize(const QuantBlock& qb, CacheType type, int64_t group, QuantAxis axis, int64_t width,
                         torch::ScalarType dtype) {
  const auto& f = kernels::cache_format(type);
  kernels::QuantizedKV kv;
  kv.codes = f.codes;
  kv.data = qb.data, kv.scale = qb.scale, kv.zero = qb.zero;
  kv.bits = f.bits, kv.group = group, kv.per_channel = axis == QuantAxis::Channel, kv.n_quant = qb.data.size(2);
  kv.residual = torch::empty({qb.data.size(0), qb.data.size(1), 0, width}, qb.scale.options().dtype(dtype));
  return kernels::dequantize_reference(kv).to(dtype);
}

}  // namespace mha2mla::model
