// Decode attention over quantized caches: the layout (a quantizer written here from the layout's
// definition, round-tripped through the reference dequantizer) and every kernel variant against the
// reference.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_cases.h"
#include "kernels/quant_attention.h"
#include "kernels/variants.h"

using namespace mha2mla;
using kernels::QuantizedKV;
using kernels::Variant;
using testutil::cpu_variants;
using testutil::left_padded;
using testutil::quantize;

namespace {

// Same dequantized values, f32 softmax: only summation order and output rounding differ, so f16 is held to f32's
// tolerance and bf16 to its own.
testutil::Tol quant_tol(torch::ScalarType dt) {
  return dt == torch::kBFloat16 ? testutil::tol_for(dt) : testutil::tol_for(torch::kFloat32);
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, torch::ScalarType dt, const std::string& what) {
  testutil::expect_close(got, want, quant_tol(dt), what);
}

struct QCase {
  int64_t B, Hq, Hkv, T, S, n_quant, D, group, window;
  bool pad;
};

}  // namespace

TEST(KernelQuantAttention, QuantizerRoundTripsThroughTheReferenceDequantizer) {
  torch::manual_seed(21);
  auto x = torch::randn({2, 3, 40, 36});
  for (int bits : {8, 4, 2, testutil::kE4M3})
    for (bool pc : {false, true}) {
      auto kv = quantize(x, bits, pc ? 8 : 10, pc, 32, torch::kFloat32);
      auto back = kernels::dequantize_reference(kv);
      ASSERT_EQ(back.sizes(), x.sizes());
      auto diff = (back.narrow(2, 0, 32) - x.narrow(2, 0, 32)).abs();
      auto err = diff.max().item<double>();
      if (bits == testutil::kE4M3) {
        // Within half a unit of the last place: 2^-4 of the value (3 mantissa bits), or of the smallest normal
        // (2^-6 · scale, scale <= max|x| / 448) where the value is subnormal.
        auto bound = x.narrow(2, 0, 32).abs() * (1.0 / 16) + x.abs().max() / 448 * std::ldexp(1.0, -10);
        EXPECT_TRUE((diff <= bound * 1.0001).all().item<bool>()) << "e4m3 per_channel " << pc;
      } else {
        // Each value within half a step of its group (+ the f16 rounding of zero), the residual exact.
        const double range = (x.max() - x.min()).item<double>();
        const double half_step = range / ((1 << bits) - 1) / 2;
        EXPECT_LE(err, half_step * 1.01 + 4e-3) << "bits " << bits << " per_channel " << pc;
      }
      EXPECT_GT(err, 0.0);
      EXPECT_TRUE(back.narrow(2, 32, 8).equal(x.narrow(2, 32, 8)));
    }
}

TEST(KernelQuantAttention, DecodeMatchesReference) {
  const std::vector<QCase> cases = {
      {1, 9, 3, 1, 300, 288, 64, 32, 0, false},  // SmolLM-shaped, residual of 12
      {1, 2, 2, 1, 256, 256, 64, 24, 0, false},  // no residual; last per-token group shorter (64 = 24+24+16)
      {2, 8, 1, 1, 77, 64, 40, 8, 0, true},      // group of 8 heads, D = 40, padded batch
      {1, 3, 1, 2, 130, 128, 64, 2, 50, false},  // 32 tiny groups per row, T = 2, window
      {1, 3, 3, 1, 200, 192, 64, 32, 61, false}, // MHA, window: 8-key blocks straddle the keys' scale groups
  };
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& c : cases) {
      for (int bits : {8, 4, 2, testutil::kE4M3}) {
        for (bool pc_keys : {false, true}) {
          torch::manual_seed(c.S + bits);
          auto q = torch::randn({c.B, c.Hq, c.T, c.D}).to(dt);
          auto kx = torch::randn({c.B, c.Hkv, c.S, c.D}), vx = torch::randn({c.B, c.Hkv, c.S, c.D});
          // KIVI: keys per channel over groups of slots, values per token.
          const int64_t kgroup = pc_keys ? 16 : c.group;
          const int64_t nq = pc_keys ? c.n_quant / 16 * 16 : c.n_quant;
          auto k = quantize(kx, bits, kgroup, pc_keys, nq, dt);
          auto v = quantize(vx, bits, c.group, false, nq, dt);
          auto valid = c.pad ? left_padded(c.B, c.S, 5) : torch::Tensor();
          const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
          const int64_t start = c.S - c.T;
          auto want = kernels::quantized_decode_reference(q, k, v, start, valid, c.window, scale);
          for (auto var : cpu_variants()) {
            auto got = kernels::quantized_decode_attention(q, k, v, start, valid, c.window, scale, var);
            const std::string what = kernels::variant_name(var) + " " + c10::toString(dt) + " bits " +
                                     std::to_string(bits) + (pc_keys ? " per-channel keys" : " per-token keys") +
                                     " S " + std::to_string(c.S) + " D " + std::to_string(c.D) + " group " +
                                     std::to_string(c.group);
            expect_close(got, want, dt, what);
          }
        }
      }
    }
  }
}

// Under f32 compute the residual may stay in the cache's float type (bf16): exactly what the f32 residual of the
// same values gives, for MHA/GQA and the MLA latent.
TEST(KernelQuantAttention, Bf16ResidualUnderF32Compute) {
  const auto f32 = torch::kFloat32, bf16 = torch::kBFloat16;
  for (int bits : {8, 4, testutil::kE4M3}) {
    torch::manual_seed(29 + bits);
    const int64_t S = 150, nq = 128;
    auto q = torch::randn({1, 9, 1, 64});
    auto k = quantize(torch::randn({1, 3, S, 64}), bits, 32, false, nq, bf16);
    auto v = quantize(torch::randn({1, 3, S, 64}), bits, 32, false, nq, bf16);
    auto widened = [&](kernels::QuantizedKV kv) { kv.residual = kv.residual.to(f32); return kv; };
    const auto what = " bits " + std::to_string(bits);
    auto want = kernels::quantized_decode_reference(q, k, v, S - 1, {}, 0, 0.125);
    auto q_lat = torch::randn({1, 8, 1, 96}) * 0.5, q_rope = torch::randn({1, 8, 1, 16});
    auto c = quantize(torch::randn({1, 1, S, 96}), bits, 32, false, nq, bf16);
    auto k_r = quantize(torch::randn({1, 2, S, 16}), bits, 16, false, nq, bf16);
    auto want_mla = kernels::quantized_mla_decode_reference(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.1);
    for (auto var : cpu_variants()) {
      auto got = kernels::quantized_decode_attention(q, k, v, S - 1, {}, 0, 0.125, var);
      expect_close(got, want, f32, kernels::variant_name(var) + what);
      EXPECT_TRUE(got.equal(kernels::quantized_decode_attention(q, widened(k), widened(v), S - 1, {}, 0, 0.125, var)))
          << kernels::variant_name(var) << what;
      auto got_mla = kernels::quantized_mla_decode_attention(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.1, var);
      expect_close(got_mla, want_mla, f32, "mla " + kernels::variant_name(var) + what);
      EXPECT_TRUE(got_mla.equal(
          kernels::quantized_mla_decode_attention(q_lat, q_rope, widened(c), widened(k_r), S - 1, {}, 0, 0.1, var)))
          << "mla " << kernels::variant_name(var) << what;
    }
  }
}

// The in-place 4-bit path for MHA/GQA in bf16 (keys per channel, values per token): key groups that do not
// match the kernel's block of 16 slots, keys and values quantized up to different slots, value groups of one
// vector, one whole row or several, an all-residual cache, and 8-bit values beside 4-bit keys.
TEST(KernelQuantAttention, Int4KeysPerChannelReadInPlace) {
  struct Case {
    int64_t B, Hq, Hkv, T, S, k_nq, k_group, v_nq, v_group, D, window;
    int v_bits;
    bool pad;
  };
  const std::vector<Case> cases = {
      {1, 9, 3, 1, 300, 240, 24, 280, 64, 64, 0, 4, false},  // SmolLM: one value group per row
      {2, 9, 3, 3, 200, 160, 40, 150, 16, 64, 70, 4, true},  // T = 3, window, padded batch
      {1, 8, 1, 1, 130, 128, 64, 128, 32, 128, 0, 4, false},  // GQA group of 8, four value groups
      {1, 2, 2, 1, 64, 0, 16, 0, 64, 64, 0, 4, false},        // nothing quantized yet
      {1, 6, 2, 1, 150, 96, 32, 120, 64, 64, 0, 8, false},    // 8-bit values: dequantized beside in-place keys
  };
  const auto dt = torch::kBFloat16;
  for (const auto& c : cases) {
    torch::manual_seed(c.S + c.k_group);
    auto q = torch::randn({c.B, c.Hq, c.T, c.D}).to(dt);
    auto kx = torch::randn({c.B, c.Hkv, c.S, c.D}), vx = torch::randn({c.B, c.Hkv, c.S, c.D});
    auto k = quantize(kx, 4, c.k_group, true, c.k_nq, dt);
    auto v = quantize(vx, c.v_bits, c.v_group, false, c.v_nq, dt);
    auto valid = c.pad ? left_padded(c.B, c.S, 7) : torch::Tensor();
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    auto want = kernels::quantized_decode_reference(q, k, v, c.S - c.T, valid, c.window, scale);
    for (auto var : cpu_variants()) {
      auto got = kernels::quantized_decode_attention(q, k, v, c.S - c.T, valid, c.window, scale, var);
      expect_close(got, want, dt, kernels::variant_name(var) + " S " + std::to_string(c.S) + " key group " +
                                      std::to_string(c.k_group) + " value group " + std::to_string(c.v_group));
    }
  }
}

TEST(KernelQuantAttention, BadLayoutIsOneClearError) {
  torch::manual_seed(1);
  auto x = torch::randn({1, 2, 20, 16});
  auto k = quantize(x, 4, 8, false, 16, torch::kFloat32);
  auto v = k;
  k.data = k.data.narrow(3, 0, 4);  // rows of 16 4-bit values need 8 bytes
  try {
    kernels::quantized_decode_attention(torch::randn({1, 2, 1, 16}), k, v, 19, {}, 0, 0.25);
    FAIL() << "short rows accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kernels::quantized_decode: k: data must be uint8"), std::string::npos)
        << e.what();
  }
}

// Absorbed MLA decoding over a quantized latent (per token) and quantized rotary keys (per channel, KIVI):
// every variant against the reference, which dequantizes both and runs mla_decode_reference.
TEST(KernelQuantAttention, MlaDecodeMatchesReference) {
  struct M {
    int64_t B, Hq, Hkv, T, S, n_quant, L, r, group, window;
    bool pad;
  };
  const std::vector<M> cases = {
      {1, 9, 3, 1, 300, 288, 128, 16, 64, 0, false},  // the SmolLM ladder's −87.5 % point
      {2, 4, 2, 1, 77, 64, 40, 8, 16, 0, true},       // L not a multiple of 16, padded batch
      {1, 8, 8, 2, 160, 128, 96, 4, 32, 40, false},    // MHA-shaped, T = 2, window
      {1, 9, 3, 1, 1000, 960, 24, 8, 8, 0, false},     // SmolLM -87.5 %: L 24, r 8, several 64-key blocks
      {1, 9, 3, 1, 1000, 896, 24, 8, 64, 0, false},    // the same with one scale group per latent row (default)
      {2, 6, 3, 1, 330, 300, 48, 8, 64, 0, true},      // latent and rotary blocks end at different slots
      {1, 9, 3, 1, 1000, 896, 24, 8, 64, 333, false},  // window: blocks start off the 8-slot grid of scale groups
  };
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& c : cases) {
      for (int bits : {8, 4, 2, testutil::kE4M3}) {
        torch::manual_seed(c.S + c.L + bits);
        auto q_lat = torch::randn({c.B, c.Hq, c.T, c.L}).to(dt), q_rope = torch::randn({c.B, c.Hq, c.T, c.r}).to(dt);
        auto cq = quantize(torch::randn({c.B, 1, c.S, c.L}), bits, c.group, false, c.n_quant, dt);
        auto kq = quantize(torch::randn({c.B, c.Hkv, c.S, c.r}), bits, 16, true, c.n_quant / 16 * 16, dt);
        // Blocks of the two buffers end at different slots here; the kernel reads each by its own n_quant.
        auto valid = c.pad ? left_padded(c.B, c.S, 7) : torch::Tensor();
        const double scale = 1.0 / std::sqrt(static_cast<double>(c.L));
        const int64_t start = c.S - c.T;
        auto want = kernels::quantized_mla_decode_reference(q_lat, q_rope, cq, kq, start, valid, c.window, scale);
        for (auto var : cpu_variants()) {
          auto got = kernels::quantized_mla_decode_attention(q_lat, q_rope, cq, kq, start, valid, c.window, scale, var);
          const std::string what = kernels::variant_name(var) + " " + c10::toString(dt) + " bits " +
                                   std::to_string(bits) + " S " + std::to_string(c.S) + " L " + std::to_string(c.L);
          expect_close(got, want, dt, what);
        }
        // A quantized latent whose slots disagree with k_r's is one clear error.
        auto short_k = kq;
        short_k.residual = short_k.residual.narrow(2, 0, short_k.residual.size(2) - 1);
        EXPECT_THROW(kernels::quantized_mla_decode_attention(q_lat, q_rope, cq, short_k, start, valid, c.window, scale),
                     std::invalid_argument);
      }
    }
  }
}

// A 4-bit latent and 4-bit rotary keys in the layouts the runtime and its variants write, bf16 and f16 compute:
// one scale group per latent row (the runtime's int4 cache), several groups, 5 chunks of 8 values in one group,
// rows of 1 to 5 and 8 chunks, per-token rotary keys, windows whose 32-key blocks straddle a per-channel slot
// group, a latent with fewer slots as codes than k_r (blocks that mix codes and residual rows), a padded batch,
// T = 2.
TEST(KernelQuantAttention, MlaInt4LayoutsMatchReference) {
  struct M {
    int64_t B, Hq, Hkv, T, S, n_quant, L, r, c_group, k_group, window;
    int64_t c_lag;  // the latent holds this many fewer slots as codes than k_r
    bool k_per_channel, pad;
    torch::ScalarType dt;
  };
  const std::vector<M> cases = {
      {1, 9, 3, 1, 1000, 896, 24, 8, 64, 64, 0, 0, true, false, torch::kBFloat16},   // SmolLM −87.5 %, runtime layout
      {1, 9, 3, 1, 1000, 896, 24, 8, 64, 64, 333, 0, true, false, torch::kFloat16},  // window: blocks off the grid
      {2, 6, 3, 2, 420, 384, 64, 16, 16, 8, 0, 40, false, true, torch::kBFloat16},   // 4 latent groups, per-token k_r
      {1, 8, 2, 1, 700, 640, 40, 16, 40, 32, 0, 16, true, false, torch::kBFloat16},  // 5 chunks in one group
      {1, 4, 4, 1, 260, 256, 8, 8, 8, 128, 100, 0, true, false, torch::kFloat16},    // one chunk each, MHA-shaped
      {1, 9, 3, 1, 600, 512, 16, 8, 16, 64, 0, 0, true, false, torch::kBFloat16},    // rows of 2 chunks (8 bytes)
      {1, 6, 2, 1, 600, 512, 32, 8, 32, 64, 0, 8, true, false, torch::kFloat16},     // rows of 4 chunks (16 bytes)
  };
  for (const auto& c : cases) {
    torch::manual_seed(c.S + c.L);
    // Queries of real models: a few channels much larger than the rest.
    auto q_lat = (torch::randn({c.B, c.Hq, c.T, c.L}) * (1 + 4 * torch::rand({1, 1, 1, c.L}))).to(c.dt);
    auto q_rope = torch::randn({c.B, c.Hq, c.T, c.r}).to(c.dt);
    auto cq = quantize(torch::randn({c.B, 1, c.S, c.L}), 4, c.c_group, false, c.n_quant - c.c_lag, c.dt);
    auto kq = quantize(torch::randn({c.B, c.Hkv, c.S, c.r}) * 2, 4, c.k_group, c.k_per_channel, c.n_quant, c.dt);
    auto valid = c.pad ? left_padded(c.B, c.S, 7) : torch::Tensor();
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.L + c.r));
    const int64_t start = c.S - c.T;
    auto want = kernels::quantized_mla_decode_reference(q_lat, q_rope, cq, kq, start, valid, c.window, scale);
    for (auto var : cpu_variants()) {
      auto got = kernels::quantized_mla_decode_attention(q_lat, q_rope, cq, kq, start, valid, c.window, scale, var);
      const std::string what = kernels::variant_name(var) + " " + c10::toString(c.dt) + " S " + std::to_string(c.S) +
                               " L " + std::to_string(c.L) + " latent group " + std::to_string(c.c_group);
      testutil::expect_close(got, want, testutil::tol_for(c.dt), what);
    }
  }
}

// FlashMLA's FP8 layout: an E4M3 latent (f32 scale per group of 128, or per row where it is shorter) beside rotary
// keys kept in bf16, which the kernels read as a buffer with every slot in its residual; bf16 compute takes the
// vdpbf16ps lanes path where the CPU has it. Every variant against the reference.
TEST(KernelQuantAttention, MlaE4M3LatentBesideBf16RotaryKeys) {
  struct M {
    int64_t B, Hq, Hkv, T, S, n_quant, L, r, group;
  };
  for (const M& c : {M{1, 9, 3, 1, 700, 640, 24, 8, 128}, M{2, 8, 2, 2, 300, 256, 160, 16, 128},
                     M{1, 16, 16, 1, 200, 192, 64, 4, 32}}) {
    for (auto dt : {torch::kBFloat16, torch::kFloat32}) {
      torch::manual_seed(c.S + c.L);
      auto q_lat = torch::randn({c.B, c.Hq, c.T, c.L}).to(dt), q_rope = torch::randn({c.B, c.Hq, c.T, c.r}).to(dt);
      auto cq = quantize(torch::randn({c.B, 1, c.S, c.L}), testutil::kE4M3, c.group, false, c.n_quant, dt);
      QuantizedKV kr;  // no codes: every slot in the residual
      kr.residual = torch::randn({c.B, c.Hkv, c.S, c.r}).to(dt);
      kr.data = torch::empty({c.B, c.Hkv, 0, c.r}, torch::kUInt8);
      kr.scale = torch::empty({c.B, c.Hkv, 0, 1}, torch::kFloat16);
      kr.zero = kr.scale;
      kr.group = c.r;
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.L + c.r));
      const int64_t start = c.S - c.T;
      auto want = kernels::quantized_mla_decode_reference(q_lat, q_rope, cq, kr, start, {}, 0, scale);
      for (auto var : cpu_variants()) {
        auto got = kernels::quantized_mla_decode_attention(q_lat, q_rope, cq, kr, start, {}, 0, scale, var);
        expect_close(got, want, dt, kernels::variant_name(var) + " " + c10::toString(dt) + " L " + std::to_string(c.L));
      }
    }
  }
}

