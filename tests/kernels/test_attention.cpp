// Every attention kernel variant against the libtorch reference, and the reference against a direct
// double-precision evaluation of the masking rules (kernels/attention.h).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/variants.h"
#include "kernels/attention.h"

using namespace mha2mla;
using kernels::Variant;
using testutil::cpu_variants;

namespace {

// Per dtype: |got - want| <= atol + rtol * |want|. bf16 outputs are rounded to 8 bits of mantissa and the
// bf16 kernels also round the probabilities to bf16 before P·V.
struct Tol {
  double atol, rtol;
};
Tol tol_for(torch::ScalarType t) {
  if (t == torch::kBFloat16) return {2e-2, 2e-2};
  if (t == torch::kFloat16) return {2e-3, 4e-3};
  return {2e-5, 1e-4};
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, Tol tol, const std::string& what) {
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

torch::Tensor make_valid(const Case& c) {
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

Inputs make_inputs(const Case& c, torch::ScalarType dt, uint64_t seed) {
  torch::manual_seed(seed);
  // q scaled up so the softmax is peaked in places (exercises the running-max rescaling).
  auto q = (torch::randn({c.B, c.Hq, c.T, c.D}) * 2.0).to(dt);
  auto k = torch::randn({c.B, c.Hkv, c.S, c.D}).to(dt);
  auto v = torch::randn({c.B, c.Hkv, c.S, c.Dv}).to(dt);
  return {q, k, v, make_valid(c)};
}

const std::vector<Case> kPrefillCases = {
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

}  // namespace

TEST(KernelAttention, ReferenceMatchesDirectDefinition) {
  // Direct evaluation in double precision of the rules in kernels/attention.h.
  const Case c{2, 4, 2, 6, 11, 5, 8, 6, 4, 1};
  auto in = make_inputs(c, torch::kFloat32, 1);
  auto got = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, 0.3);
  auto q = in.q.to(torch::kFloat64), k = in.k.to(torch::kFloat64), v = in.v.to(torch::kFloat64);
  auto want = torch::zeros({c.B, c.Hq, c.T, c.Dv}, torch::kFloat64);
  int fully_masked = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t t = 0; t < c.T; ++t) {
        const int64_t kvh = h / (c.Hq / c.Hkv), p = c.start + t;
        std::vector<double> w(c.S, 0.0);
        double mx = -INFINITY, sum = 0;
        for (int64_t s = 0; s < c.S; ++s) {
          const bool vis = s <= p && s > p - c.window && in.valid[b][s].item<bool>();
          if (!vis) continue;
          w[s] = (q[b][h][t] * k[b][kvh][s]).sum().item<double>() * 0.3;
          mx = std::max(mx, w[s]);
        }
        if (mx == -INFINITY) {
          ++fully_masked;
          continue;
        }
        for (int64_t s = 0; s < c.S; ++s) {
          const bool vis = s <= p && s > p - c.window && in.valid[b][s].item<bool>();
          w[s] = vis ? std::exp(w[s] - mx) : 0.0;
          sum += w[s];
        }
        for (int64_t s = 0; s < c.S; ++s)
          if (w[s] > 0) want[b][h][t] += v[b][kvh][s] * (w[s] / sum);
      }
  EXPECT_GT(fully_masked, 0);  // the case covers padding rows
  expect_close(got, want.to(torch::kFloat32), {1e-5, 1e-5}, "reference");
}

TEST(KernelAttention, FlashMatchesReference) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& c : kPrefillCases) {
      auto in = make_inputs(c, dt, 7);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      auto want = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, scale);
      for (auto var : cpu_variants()) {
        auto got = kernels::flash_attention(in.q, in.k, in.v, c.start, in.valid, c.window, scale, var);
        expect_close(got, want, tol_for(dt),
                     "flash " + kernels::variant_name(var) + " " + c10::toString(dt) + " " + c.name());
      }
    }
  }
}

TEST(KernelAttention, DecodeMatchesReference) {
  const std::vector<Case> cases = {
      {1, 9, 3, 1, 300, 299, 64, 64, 0, 0},    // one token after a long prompt: several splits
      {1, 2, 2, 1, 1, 0, 64, 64, 0, 0},        // the very first token
      {1, 8, 1, 1, 1000, 999, 64, 64, 0, 0},   // group of 8
      {3, 6, 2, 1, 45, 44, 64, 64, 0, 1},      // padded batch (last row all padding up to start+2)
      {2, 4, 2, 3, 600, 597, 64, 64, 100, 0},  // a few tokens with a window
      {2, 3, 1, 2, 77, 75, 40, 24, 0, 1},      // D and Dv tails
      {1, 6, 2, 1, 200, 199, 64, 48, 0, 0},    // Dv != D on the bf16 pairs path (D a multiple of 32)
  };
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& c : cases) {
      auto in = make_inputs(c, dt, 11);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      auto want = kernels::attention_reference(in.q, in.k, in.v, c.start, in.valid, c.window, scale);
      // Three threads (on any core count) take more splits, merged by whichever thread finishes a group last.
      const int saved = at::get_num_threads();
      for (int threads : {1, 3}) {
        at::set_num_threads(threads);
        for (auto var : cpu_variants()) {
          auto got = kernels::decode_attention(in.q, in.k, in.v, c.start, in.valid, c.window, scale, var);
          expect_close(got, want, tol_for(dt),
                       "decode " + kernels::variant_name(var) + " " + c10::toString(dt) + " " + c.name() + " threads " +
                           std::to_string(threads));
        }
      }
      at::set_num_threads(saved);
    }
  }
}

TEST(KernelAttention, StridedCacheViewsAreRead) {
  // A cache buffer with spare capacity, viewed as its filled slots (what KVLayerCache::append returns).
  torch::manual_seed(3);
  auto kbuf = torch::randn({2, 2, 64, 64}), vbuf = torch::randn({2, 2, 64, 64});
  auto k = kbuf.narrow(2, 0, 40), v = vbuf.narrow(2, 0, 40);
  auto q = torch::randn({2, 6, 40, 64}).transpose(1, 2).contiguous().transpose(1, 2);  // non-contiguous q
  auto want = kernels::attention_reference(q, k, v, 0, {}, 0, 0.125);
  for (auto var : cpu_variants()) {
    expect_close(kernels::flash_attention(q, k, v, 0, {}, 0, 0.125, var), want, tol_for(torch::kFloat32),
                 "flash strided " + kernels::variant_name(var));
    auto q1 = q.narrow(2, 39, 1);
    expect_close(kernels::decode_attention(q1, k, v, 39, {}, 0, 0.125, var),
                 kernels::attention_reference(q1, k, v, 39, {}, 0, 0.125), tol_for(torch::kFloat32),
                 "decode strided " + kernels::variant_name(var));
  }
}

TEST(KernelAttention, FullyMaskedRowsAreZero) {
  const Case c{2, 4, 2, 5, 12, 7, 64, 64, 0, 1};
  auto in = make_inputs(c, torch::kFloat32, 5);
  in.valid[1].narrow(0, 0, 10).fill_(false);  // batch row 1: slots 0..9 padding -> its tokens 0..2 see nothing
  for (auto var : cpu_variants()) {
    auto f = kernels::flash_attention(in.q, in.k, in.v, c.start, in.valid, 0, 0.125, var);
    auto d = kernels::decode_attention(in.q, in.k, in.v, c.start, in.valid, 0, 0.125, var);
    for (const auto& out : {f, d}) {
      EXPECT_TRUE(out[1].narrow(1, 0, 3).eq(0).all().item<bool>()) << kernels::variant_name(var);
      EXPECT_GT(out[1].narrow(1, 3, 2).abs().sum().item<double>(), 0.0) << kernels::variant_name(var);
    }
  }
}

TEST(KernelAttention, BadShapesAreOneClearError) {
  auto q = torch::randn({1, 3, 4, 8}), k = torch::randn({1, 2, 4, 8}), v = torch::randn({1, 2, 4, 8});
  try {
    kernels::flash_attention(q, k, v, 0, {}, 0, 1.0);
    FAIL() << "3 query heads over 2 KV heads accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kernels::flash_attention: query heads (3)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kernels::decode_attention(torch::randn({1, 2, 1, 8}), k, v, 3, torch::ones({1, 5}, torch::kBool), 0, 1.0),
               std::invalid_argument);
}

namespace {
struct MlaCase {
  int64_t B, Hq, Hkv, T, S, start, L, r, window;
  int pad;
};
}  // namespace

TEST(KernelAttention, MlaDecodeMatchesReference) {
  const std::vector<MlaCase> cases = {
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
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& m : cases) {
      torch::manual_seed(13);
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
      const double scale = 1.0 / std::sqrt(static_cast<double>(m.L + m.r));
      auto want = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, m.start, valid, m.window, scale);
      for (auto var : cpu_variants()) {
        auto got = kernels::mla_decode_attention(q_lat, q_rope, c, k_r, m.start, valid, m.window, scale, var);
        expect_close(got, want, tol_for(dt),
                     "mla " + kernels::variant_name(var) + " " + c10::toString(dt) + " L" + std::to_string(m.L) +
                         " r" + std::to_string(m.r) + " S" + std::to_string(m.S));
      }
    }
  }
}

TEST(KernelAttention, MlaReferenceEqualsMaterialisedAttention) {
  // Absorbed MLA is ordinary attention with K = [c, k_r] and V = c: check against the GQA reference.
  torch::manual_seed(17);
  const int64_t B = 2, Hq = 6, Hkv = 3, T = 1, S = 30, L = 24, r = 8;
  auto q_lat = torch::randn({B, Hq, T, L}), q_rope = torch::randn({B, Hq, T, r});
  auto c = torch::randn({B, S, L}), k_r = torch::randn({B, Hkv, S, r});
  auto got = kernels::mla_decode_reference(q_lat, q_rope, c, k_r, S - 1, {}, 0, 0.2);
  // Materialise per query head: K_h = [c, k_r[h / 2]].
  auto k = torch::cat({c.unsqueeze(1).expand({B, Hq, S, L}), k_r.repeat_interleave(Hq / Hkv, 1)}, -1);
  auto v = c.unsqueeze(1).expand({B, Hq, S, L}).contiguous();
  auto want = kernels::attention_reference(torch::cat({q_lat, q_rope}, -1), k, v, S - 1, {}, 0, 0.2);
  expect_close(got, want, {1e-5, 1e-5}, "mla reference");
}
