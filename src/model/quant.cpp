#include "model/quant.h"

#include <limits>

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

torch::Tensor unpack(const torch::Tensor& data, int bits, int64_t width) {  // -> int32 [.., width]
  const int per = 8 / bits;
  auto d = data.to(torch::kInt32);
  if (per == 1) return d;
  auto shifts = torch::arange(0, per * bits, bits, d.options());
  auto q = torch::bitwise_and(torch::bitwise_right_shift(d.unsqueeze(-1), shifts), (1 << bits) - 1);
  auto sizes = data.sizes().vec();
  sizes.back() *= per;
  return q.reshape(sizes).narrow(-1, 0, width);
}

}  // namespace

int64_t packed_row_bytes(int64_t width, int bits) { return (width * bits + 7) / 8; }
int64_t quant_groups(int64_t width, int64_t group) { return (width + group - 1) / group; }

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
    const torch::Tensor err = group_sum(d.abs()) / count;
    const torch::Tensor better = err < best_err;
    if (!better.any().item<bool>()) break;
    best_err = torch::where(better, err, best_err);
    best_z = torch::where(better, z, best_z);
    const torch::Tensor a = d.abs();
    const torch::Tensor e = d.sign() * torch::relu(a - (a + 1e-8).pow(p - 1) / beta);
    z = group_sum(x - e - qs) / count;
    beta *= kappa;
  }
  return best_z;
}

}  // namespace

QuantBlock quantize(const torch::Tensor& x, int bits, int64_t group, QuantAxis axis, QuantMethod method) {
  check(bits == 8 || bits == 4 || bits == 2, "quantize: bits must be 8, 4 or 2");
  check(x.dim() == 4, "quantize: expects [B, H, N, D]");
  const double qmax = (1 << bits) - 1;
  const int64_t B = x.size(0), H = x.size(1), N = x.size(2), D = x.size(3);
  auto xf = x.to(torch::kFloat32);
  const int64_t ng = quant_groups(D, group);
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

torch::Tensor dequantize(const QuantBlock& qb, int bits, int64_t group, QuantAxis axis, int64_t width,
                         torch::ScalarType dtype) {
  auto q = unpack(qb.data, bits, width).to(torch::kFloat32);
  auto s = qb.scale.to(torch::kFloat32), z = qb.zero.to(torch::kFloat32);
  if (axis == QuantAxis::Token) {
    const int64_t ng = s.size(-1);
    auto sizes = s.sizes().vec();
    auto expand = [&](const torch::Tensor& t) {
      auto e = t.unsqueeze(-1).expand({sizes[0], sizes[1], sizes[2], ng, group});
      return e.reshape({sizes[0], sizes[1], sizes[2], ng * group}).narrow(-1, 0, width);
    };
    return (q * expand(s) + expand(z)).to(dtype);
  }
  return (q * s.repeat_interleave(group, 2) + z.repeat_interleave(group, 2)).to(dtype);
}

double quantized_bytes_per_token(int64_t heads, int64_t width, int bits, int64_t group, QuantAxis axis) {
  const double meta = axis == QuantAxis::Token ? 4.0 * static_cast<double>(quant_groups(width, group))
                                               : 4.0 * static_cast<double>(width) / static_cast<double>(group);
  return static_cast<double>(heads) * (static_cast<double>(packed_row_bytes(width, bits)) + meta);
}

}  // namespace mha2mla::model
