#pragma once
// Shapes, inputs, quantized caches and tolerances shared by the attention kernel tests (CPU variants, the CUDA kernels on the
// device and under the CPU emulation of CUDA).
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/quant_attention.h"

namespace mha2mla::testutil {

// Per dtype: |got - want| <= atol + rtol * |want|. bf16 outputs are rounded to 8 bits of mantissa and the
// bf16 kernels also round the probabilities to bf16 before P·V.
struct Tol {
  double atol, rtol;
};
inline Tol tol_for(torch::ScalarType t) {
  if (t == torch::kBFloat16) return {2e-2, 2e-2};
  if (t == torch::kFloat16) return {2e-3, 4e-3};
  return {2e-5, 1e-4};
}

inline void expect_close(const torch::Tensor& got, const torch::Tensor& want, Tol tol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  ASSERT_FALSE(g.isnan().any().item<bool>()) << what << ": NaN in the output";
  auto excess = (g - w).abs() - (tol.atol + tol.rtol * w.abs());
  const double worst = excess.max().item<double>();
  EXPECT_LE(worst, 0.0) << what << ": max |diff| " << (g - w).abs().max().item<double>();
}

struct Case {
  int64_t B, Hq, Hkv, T, S, start, D, Dv, window;
  int pad;  // 0: no valid mask; 1: left padding of different lengths, one row fully padded in the new tokens
  std::string name() const {
    return "B" + std::to_string(B) + "_Hq" + std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) + "_T" +
           std::to_string(T) + "_S" + std::to_string(S) + "_start" + std::to_string(start) + "_D" + std::to_string(D) +
           "_Dv" + std::to_string(Dv) + "_w" + std::to_string(window) + "_pad" + std::to_string(pad);
  }
};

inline torch::Tensor make_valid(const Case& c) {
  if (!c.pad) return {};
  auto valid = torch::ones({c.B, c.S}, torch::kBool);
  for (int64_t b = 0; b < c.B; ++b) {
    // Row b is left-padded by pad_len slots; the last row pads past start + 1, so its first new
    // tokens see nothing at all.
    const int64_t pad_len = b == c.B - 1 ? std::min(c.S, c.start + 2) : (b * 5) % (c.start + c.T);
    valid[b].narrow(0, 0, pad_len).fill_(false);
  }
  return valid;
}

struct Inputs {
  torch::Tensor q, k, v, valid;
};

inline Inputs make_inputs(const Case& c, torch::ScalarType dt, uint64_t seed) {
  torch::manual_seed(seed);
  // q scaled up so the softmax is peaked in places (exercises the running-max rescaling).
  auto q = (torch::randn({c.B, c.Hq, c.T, c.D}) * 2.0).to(dt);
  auto k = torch::randn({c.B, c.Hkv, c.S, c.D}).to(dt);
  auto v = torch::randn({c.B, c.Hkv, c.S, c.Dv}).to(dt);
  return {q, k, v, make_valid(c)};
}

// Prefill: many query rows.
inline const std::vector<Case> kPrefillCases = {
    {1, 3, 1, 37, 37, 0, 64, 64, 0, 0},      // GQA group of 3, odd length
    {1, 2, 2, 77, 77, 0, 64, 64, 0, 0},      // group of 1, S not a multiple of the tile
    {2, 8, 1, 20, 20, 0, 32, 32, 0, 0},      // group of 8
    {1, 9, 3, 130, 130, 0, 64, 64, 0, 0},    // SmolLM-shaped, several query tiles
    {1, 3, 1, 13, 33, 20, 64, 64, 0, 0},     // chunked prefill: new tokens after a filled cache
    {3, 6, 2, 19, 29, 10, 64, 64, 0, 1},     // padded batch with a fully padded row
    {2, 4, 2, 50, 50, 0, 64, 64, 16, 0},     // sliding window
    {2, 4, 2, 25, 40, 15, 64, 64, 7, 1},     // window, start and padding together
    {1, 2, 1, 21, 21, 0, 40, 24, 0, 0},      // D and Dv not multiples of 16, D != Dv
    {1, 2, 1, 1, 9, 8, 64, 48, 0, 0},        // a single query
};

// Decode: few query rows over a long cache.
inline const std::vector<Case> kDecodeCases = {
    {1, 9, 3, 1, 300, 299, 64, 64, 0, 0},    // one token after a long prompt: several splits
    {1, 2, 2, 1, 1, 0, 64, 64, 0, 0},        // the very first token
    {1, 8, 1, 1, 1000, 999, 64, 64, 0, 0},   // group of 8
    {3, 6, 2, 1, 45, 44, 64, 64, 0, 1},      // padded batch (last row all padding up to start+2)
    {2, 4, 2, 3, 600, 597, 64, 64, 100, 0},  // a few tokens with a window
    {2, 3, 1, 2, 77, 75, 40, 24, 0, 1},      // D and Dv tails
    {1, 6, 2, 1, 200, 199, 64, 48, 0, 0},    // Dv != D on the bf16 pairs path (D a multiple of 32)
};

struct MlaCase {
  int64_t B, Hq, Hkv, T, S, start, L, r, window;
  int pad;  // the last batch row sees only its 3 newest slots
  std::string name() const {
    return "B" + std::to_string(B) + "_Hq" + std::to_string(Hq) + "_Hkv" + std::to_string(Hkv) + "_T" +
           std::to_string(T) + "_S" + std::to_string(S) + "_L" + std::to_string(L) + "_r" + std::to_string(r) +
           "_w" + std::to_string(window) + "_pad" + std::to_string(pad);
  }
};

inline const std::vector<MlaCase> kMlaCases = {
    {1, 9, 3, 1, 300, 299, 64, 16, 0, 0},   // SmolLM-shaped: 3 RoPE key heads
    {2, 8, 1, 1, 77, 76, 128, 32, 0, 1},    // one RoPE head for all, padded batch
    {1, 3, 3, 2, 50, 48, 80, 8, 20, 0},     // L and r not multiples of 16, window, T = 2
    {1, 4, 1, 1, 600, 599, 32, 0, 0, 0},    // no RoPE part
    // The SmolLM ladder's shapes (query rows as SIMD lanes): -87.5 % (L 24, r 8), 360M (15/5 heads, L 40),
    // S not a multiple of the 64-key block, a padded batch, a window, odd L and r.
    {1, 9, 3, 1, 1000, 999, 24, 8, 0, 0},
    {2, 15, 5, 1, 333, 332, 40, 8, 0, 1},
    {1, 9, 3, 1, 200, 199, 24, 8, 70, 0},
    {1, 6, 2, 2, 130, 128, 7, 3, 0, 0},
};

// q_lat, q_rope, c, k_r and valid of an MLA case (q_rope and k_r undefined when r = 0).
inline std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> make_mla_inputs(
    const MlaCase& m, torch::ScalarType dt, uint64_t seed) {
  torch::manual_seed(seed);
  auto q_lat = (torch::randn({m.B, m.Hq, m.T, m.L}) * 0.5).to(dt);
  auto c = torch::randn({m.B, m.S, m.L}).to(dt);
  torch::Tensor q_rope, k_r;
  if (m.r) {
    q_rope = torch::randn({m.B, m.Hq, m.T, m.r}).to(dt);
    k_r = torch::randn({m.B, m.Hkv, m.S, m.r}).to(dt);
  }
  torch::Tensor valid;
  if (m.pad) {
    valid = torch::ones({m.B, m.S}, torch::kBool);
    valid[m.B - 1].narrow(0, 0, m.S - 3).fill_(false);
  }
  return {q_lat, q_rope, c, k_r, valid};
}

// Asymmetric min/max quantization of slots [0, n_quant) of x [B, H, S, D] (f32), the rest kept as residual.
// `bits` kE4M3 asks for FP8 E4M3 codes (one byte each, f32 scale = absmax / 448, no zero point).
constexpr int kE4M3 = 0;

// The 127 non-negative finite E4M3 values in code order, from the OCP FP8 definition: exponent field e (bias 7),
// mantissa m of 3 bits, e = 0 subnormal, code 0x7f NaN.
inline torch::Tensor e4m3_positive_values() {
  std::vector<double> v;
  for (int c = 0; c < 127; ++c) {
    const int e = c >> 3, m = c & 7;
    v.push_back(e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7));
  }
  return torch::tensor(v, torch::kFloat64);
}

// The E4M3 code of each value of y (|y| <= 448) by search: the nearest value, on a tie the even code.
inline torch::Tensor e4m3_nearest(const torch::Tensor& y) {
  static const torch::Tensor vals = e4m3_positive_values();
  auto a = y.abs().to(torch::kFloat64).unsqueeze(-1);
  auto dist = (a - vals).abs();
  auto best = dist.eq(std::get<0>(dist.min(-1, true)));
  auto even = torch::arange(127).remainder(2).eq(0);
  auto pick = torch::where((best & even).any(-1, true), best & even, best).to(torch::kInt32).argmax(-1);
  return (pick + y.lt(0).to(torch::kInt64) * 128).to(torch::kUInt8);
}

inline kernels::QuantizedKV quantize_e4m3(const torch::Tensor& x, int64_t group, bool per_channel, int64_t n_quant,
                                          torch::ScalarType dt) {
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), D = x.size(3);
  kernels::QuantizedKV kv;
  kv.codes = kernels::Codes::E4M3;
  kv.bits = 8, kv.group = group, kv.per_channel = per_channel, kv.n_quant = n_quant;
  auto xq = x.narrow(2, 0, n_quant).to(torch::kFloat32);
  kv.data = torch::zeros({B, H, n_quant, D}, torch::kUInt8);
  auto code = [](const torch::Tensor& sl, const torch::Tensor& sc) {
    return e4m3_nearest(torch::where(sc > 0, sl / sc, torch::zeros_like(sl)).clamp(-448, 448));
  };
  if (per_channel) {
    kv.scale = torch::empty({B, H, n_quant / group, D}, torch::kFloat32);
    for (int64_t g = 0; g < n_quant / group; ++g) {
      auto sl = xq.narrow(2, g * group, group);
      auto sc = sl.abs().amax(2, true) / 448.f;
      kv.scale.narrow(2, g, 1).copy_(sc);
      kv.data.narrow(2, g * group, group).copy_(code(sl, sc));
    }
  } else {
    const int64_t ng = (D + group - 1) / group;
    kv.scale = torch::empty({B, H, n_quant, ng}, torch::kFloat32);
    for (int64_t g = 0; g < ng; ++g) {
      auto sl = xq.narrow(3, g * group, std::min(group, D - g * group));
      auto sc = sl.abs().amax(3, true) / 448.f;
      kv.scale.narrow(3, g, 1).copy_(sc);
      kv.data.narrow(3, g * group, sl.size(3)).copy_(code(sl, sc));
    }
  }
  kv.residual = x.narrow(2, n_quant, S - n_quant).to(dt);
  return kv;
}

inline kernels::QuantizedKV quantize(const torch::Tensor& x, int bits, int64_t group, bool per_channel, int64_t n_quant,
                     torch::ScalarType dt) {
  if (bits == kE4M3) return quantize_e4m3(x, group, per_channel, n_quant, dt);
  const int64_t B = x.size(0), H = x.size(1), S = x.size(2), D = x.size(3);
  const double qmax = (1 << bits) - 1;
  auto xq = x.narrow(2, 0, n_quant);
  auto codes = torch::zeros({B, H, n_quant, D}, torch::kInt32);
  kernels::QuantizedKV kv;
  kv.bits = bits, kv.group = group, kv.per_channel = per_channel, kv.n_quant = n_quant;
  auto code_of = [&](const torch::Tensor& slice, const torch::Tensor& mn, const torch::Tensor& sc) {
    // scale and zero as stored (f16), so codes are the nearest under the stored values
    return torch::where(sc > 0, ((slice - mn) / sc).round(), torch::zeros_like(slice)).clamp(0, qmax).to(torch::kInt32);
  };
  if (per_channel) {
    const int64_t ng = n_quant / group;
    kv.scale = torch::empty({B, H, ng, D}, torch::kFloat16);
    kv.zero = torch::empty({B, H, ng, D}, torch::kFloat16);
    for (int64_t g = 0; g < ng; ++g) {
      auto sl = xq.narrow(2, g * group, group);
      auto mn = sl.amin(2, true).to(torch::kFloat16).to(torch::kFloat32);
      auto sc = ((sl.amax(2, true) - mn) / qmax).to(torch::kFloat16).to(torch::kFloat32);
      kv.zero.narrow(2, g, 1).copy_(mn);
      kv.scale.narrow(2, g, 1).copy_(sc);
      codes.narrow(2, g * group, group).copy_(code_of(sl, mn, sc));
    }
  } else {
    const int64_t ng = (D + group - 1) / group;
    kv.scale = torch::empty({B, H, n_quant, ng}, torch::kFloat16);
    kv.zero = torch::empty({B, H, n_quant, ng}, torch::kFloat16);
    for (int64_t g = 0; g < ng; ++g) {
      auto sl = xq.narrow(3, g * group, std::min(group, D - g * group));
      auto mn = sl.amin(3, true).to(torch::kFloat16).to(torch::kFloat32);
      auto sc = ((sl.amax(3, true) - mn) / qmax).to(torch::kFloat16).to(torch::kFloat32);
      kv.zero.narrow(3, g, 1).copy_(mn);
      kv.scale.narrow(3, g, 1).copy_(sc);
      codes.narrow(3, g * group, sl.size(3)).copy_(code_of(sl, mn, sc));
    }
  }
  // Pack: value i of a row in byte i / (8 / bits) at bit (i % (8 / bits)) * bits.
  const int64_t per_byte = 8 / bits, nbytes = (D * bits + 7) / 8;
  auto padded = torch::zeros({B, H, n_quant, nbytes * per_byte}, torch::kInt32);
  padded.narrow(3, 0, D).copy_(codes);
  auto shifts = torch::arange(0, 8, bits, torch::kInt32);
  kv.data = padded.view({B, H, n_quant, nbytes, per_byte}).bitwise_left_shift(shifts).sum(-1).to(torch::kUInt8);
  kv.residual = x.narrow(2, n_quant, S - n_quant).to(dt);
  return kv;
}

// Validity [B, S] where the last batch row holds only its newest `real` slots (a left-padded prompt).
inline torch::Tensor left_padded(int64_t B, int64_t S, int64_t real) {
  auto valid = torch::ones({B, S}, torch::kBool);
  valid[B - 1].narrow(0, 0, S - real).fill_(false);
  return valid;
}

}  // namespace mha2mla::testutil
