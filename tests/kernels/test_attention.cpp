// Every attention kernel variant against the libtorch reference, and the reference against a direct
// double-precision evaluation of the masking rules (kernels/attention.h).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_cases.h"
#include "kernels/variants.h"

using namespace mha2mla;
using kernels::Variant;
using testutil::cpu_variants;
using namespace testutil;

namespace {


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
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& c : kDecodeCases) {
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

// The cache stored in another float type than q (AttnArgs::kv_dtype). Under f32 compute a bf16 or f16 cache is
// widened in registers: every variant must give exactly what it gives on the cache widened beforehand. A cache
// wider than q (f32 under bf16) is read as stored: within q's tolerance of the reference.
TEST(KernelAttention, CacheInAnotherDtypeThanQ) {
  const auto f32 = torch::kFloat32;
  for (auto qdt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16})
    for (auto kdt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      if (qdt == kdt) continue;
      for (const auto* cases : {&kPrefillCases, &kDecodeCases})
        for (const auto& c : *cases) {
          auto in = make_inputs(c, kdt, 19);
          auto q = in.q.to(qdt);
          const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
          const std::string what = std::string(c10::toString(qdt)) + " q over a " + c10::toString(kdt) + " cache " + c.name();
          auto want = kernels::attention_reference(q, in.k, in.v, c.start, in.valid, c.window, scale);
          for (auto var : cpu_variants()) {
            auto got = kernels::attention(q, in.k, in.v, c.start, in.valid, c.window, scale, var);
            expect_close(got, want, tol_for(qdt == f32 ? kdt : qdt), kernels::variant_name(var) + " " + what);
            if (qdt == f32) {
              EXPECT_TRUE(got.equal(kernels::attention(q, in.k.to(f32), in.v.to(f32), c.start, in.valid, c.window,
                                                       scale, var)))
                  << kernels::variant_name(var) << " " << what << ": not what the widened cache gives";
            }
          }
        }
      for (const auto& m : kMlaCases) {
        auto [q_lat, q_rope, lat, k_r, valid] = make_mla_inputs(m, kdt, 23);
        q_lat = q_lat.to(qdt);
        if (q_rope.defined()) q_rope = q_rope.to(qdt);
        const double scale = 1.0 / std::sqrt(static_cast<double>(m.L + m.r));
        const std::string what = std::string(c10::toString(qdt)) + " q over a " + c10::toString(kdt) + " latent L" +
                                 std::to_string(m.L) + " r" + std::to_string(m.r) + " S" + std::to_string(m.S);
        auto want = kernels::mla_decode_reference(q_lat, q_rope, lat, k_r, m.start, valid, m.window, scale);
        for (auto var : cpu_variants()) {
          auto got = kernels::mla_decode_attention(q_lat, q_rope, lat, k_r, m.start, valid, m.window, scale, var);
          expect_close(got, want, tol_for(qdt == f32 ? kdt : qdt), "mla " + kernels::variant_name(var) + " " + what);
          if (qdt == f32) {
            EXPECT_TRUE(got.equal(kernels::mla_decode_attention(q_lat, q_rope, lat.to(f32),
                                                                k_r.defined() ? k_r.to(f32) : k_r, m.start, valid,
                                                                m.window, scale, var)))
                << "mla " << kernels::variant_name(var) << " " << what << ": not what the widened cache gives";
          }
        }
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
  EXPECT_THROW(kernels::decode_attention(torch::randn({1, 2, 1, 8}), k, v.to(torch::kBFloat16), 3, {}, 0, 1.0),
               std::invalid_argument);  // k and v in two dtypes
}

TEST(KernelAttention, MlaDecodeMatchesReference) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& m : kMlaCases) {
      auto [q_lat, q_rope, c, k_r, valid] = make_mla_inputs(m, dt, 13);
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
