#include "model/quant.h"

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

QuantBlock quantize(const torch::Tensor& x, int bits, int64_t group, QuantAxis axis) {
  check(bits == 8 || bits == 4 || bits == 2, "quantize: bits must be 8, 4 or 2");
  check(x.dim() == 4, "quantize: expects [B, H, N, D]");
  const double qmax = (1 << bits) - 1;
  const int64_t B = x.size(0), H = x.size(1), N = x.size(2), D = x.size(3);
  auto xf = x.to(torch::kFloat32);
  torch::Tensor mn, mx;
  if (axis == QuantAxis::Token) {
    const int64_t ng = quant_groups(D, group);
    auto g = pad_repeat_last(xf, ng * group).view({B, H, N, ng, group});
    mn = g.amin(-1);
    mx = g.amax(-1);
  } else {
    check(N % group == 0, "quantize: per-channel blocks need a multiple of the group size in tokens");
    auto g = xf.view({B, H, N / group, group, D});
    mn = g.amin(3);
    mx = g.amax(3);
  }
  auto zero = mn.clamp(-kF16Max, kF16Max).to(torch::kFloat16);
  auto scale = ((mx - zero.to(torch::kFloat32)) / qmax).clamp(0, kF16Max).to(torch::kFloat16);
  auto s = scale.to(torch::kFloat32), z = zero.to(torch::kFloat32);
  auto s_safe = torch::where(s > 0, s, torch::ones_like(s));
  torch::Tensor q;
  if (axis == QuantAxis::Token) {
    const int64_t ng = s.size(-1);
    auto expand = [&](const torch::Tensor& t) {
      return t.unsqueeze(-1).expand({B, H, N, ng, group}).reshape({B, H, N, ng * group}).narrow(-1, 0, D);
    };
    q = ((xf - expand(z)) / expand(s_safe)).round().clamp(0, qmax);
  } else {
    auto expand = [&](const torch::Tensor& t) { return t.repeat_interleave(group, 2); };
    q = ((xf - expand(z)) / expand(s_safe)).round().clamp(0, qmax);
  }
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
