// The fused per-token ops (RMSNorm, SiLU-gated product, RoPE) against their libtorch references.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/variants.h"

using namespace mha2mla;

namespace {

// Both sides round to the storage type at the same points; only the f32 accumulation order (RMSNorm's sum)
// and exp's last bits (SiLU) differ, so a value may move by a unit in the last place, two where two
// roundings follow each other (RMSNorm: the normalised value, then its product with the weight); in f32 a
// few units, from the order of the sum of squares.
void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  const auto dt = want.scalar_type();
  const double ulp = dt == torch::kBFloat16 ? 1.0 / 128 : dt == torch::kFloat16 ? 1.0 / 1024 : 1.0 / (1 << 23);
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  const double err = ((g - w).abs() / (w.abs() + 1e-6)).max().item<double>();
  EXPECT_LE(err, dt == torch::kFloat32 ? 2e-6 : 2.5 * ulp) << what;
  // In bf16/f16 most values are bit-identical: a systematic difference would show here first.
  if (dt != torch::kFloat32) {
    const double same = (g == w).to(torch::kFloat64).mean().item<double>();
    EXPECT_GE(same, 0.9) << what;
  }
}

const std::vector<torch::ScalarType> kTypes = {torch::kFloat32, torch::kBFloat16, torch::kFloat16};

std::string name(torch::ScalarType t) { return c10::toString(t); }

}  // namespace

TEST(KernelElementwise, RmsNormMatchesReference) {
  for (auto dt : kTypes)
    for (auto shape : std::vector<std::vector<int64_t>>{{1, 1, 576}, {2, 7, 64}, {3, 33}, {1, 5}, {4, 2, 3, 1000}}) {
      torch::manual_seed(shape.back());
      auto x = (torch::randn(shape) * 3).to(dt);
      auto w = (torch::rand({shape.back()}) + 0.5).to(dt);
      for (auto var : testutil::cpu_variants())
        expect_close(kernels::rms_norm(x, w, 1e-5, var), kernels::rms_norm_reference(x, w, 1e-5),
                     "rms_norm " + kernels::variant_name(var) + " " + name(dt) + " D=" + std::to_string(shape.back()));
    }
}

TEST(KernelElementwise, RmsNormOfAStridedViewAndUnderAutograd) {
  auto x = torch::randn({2, 3, 4, 64}).transpose(1, 2);  // [2, 4, 3, 64], not contiguous
  auto w = torch::rand({64}) + 0.5;
  expect_close(kernels::rms_norm(x, w, 1e-6), kernels::rms_norm_reference(x, w, 1e-6), "strided");
  // A weight that needs a gradient takes the reference, so training still differentiates through it.
  auto wg = w.clone().requires_grad_(true);
  kernels::rms_norm(x, wg, 1e-6).sum().backward();
  ASSERT_TRUE(wg.grad().defined());
  auto wr = w.clone().requires_grad_(true);
  kernels::rms_norm_reference(x, wr, 1e-6).sum().backward();
  EXPECT_TRUE(torch::allclose(wg.grad(), wr.grad()));
  // A prompt (more than 64 rows) runs libtorch's vectorised graph: the reference, bit for bit.
  auto p = torch::randn({1, 65, 64}).to(torch::kBFloat16);
  auto pw = (torch::rand({64}) + 0.5).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(kernels::rms_norm(p, pw, 1e-6), kernels::rms_norm_reference(p, pw, 1e-6)));
}

TEST(KernelElementwise, SiluMulMatchesReference) {
  for (auto dt : kTypes)
    for (int64_t n : {1, 17, 1536, 40000}) {
      torch::manual_seed(n);
      auto g = (torch::randn({2, n}) * 4).to(dt), u = torch::randn({2, n}).to(dt);
      for (auto var : testutil::cpu_variants())
        expect_close(kernels::silu_mul(g, u, var), kernels::silu_mul_reference(g, u),
                     "silu_mul " + kernels::variant_name(var) + " " + name(dt) + " n=" + std::to_string(n));
    }
  // Large gates of either sign (exp(-v) overflows to inf below about -88), spread over a vector and its tail:
  // silu must be v or a value of v's sign near 0, never NaN.
  auto g = torch::tensor({-100.f, -1000.f, 100.f, 88.f, -88.f, 1000.f, -87.f, 87.f, -100.f, 100.f}), u = torch::ones({10});
  for (auto var : testutil::cpu_variants()) {
    auto y = kernels::silu_mul(g, u, var);
    EXPECT_FALSE(y.isnan().any().item<bool>()) << kernels::variant_name(var);
    EXPECT_TRUE(torch::allclose(y, kernels::silu_mul_reference(g, u), 1e-6, 1e-30)) << kernels::variant_name(var) << y;
  }
}

// Prompts (more rows than the kernels take) and the reference variant go to libtorch ops, which in 1.13 have no
// f16 silu on the CPU: every dtype must still work there, on every variant, with and without autograd.
TEST(KernelElementwise, SiluMulOfAPromptInEveryDtype) {
  auto variants = testutil::cpu_variants();
  variants.insert(variants.begin(), kernels::Variant::Reference);
  for (auto dt : kTypes) {
    torch::manual_seed(5);
    auto g = (torch::randn({1, 300, 64}) * 4).to(dt), u = torch::randn({1, 300, 64}).to(dt);
    // bf16 keeps libtorch's own op, which rounds inside silu too (see silu_mul); f16 and f32 round as the reference.
    auto want = dt == torch::kBFloat16 ? torch::silu(g) * u : kernels::silu_mul_reference(g, u);
    for (auto var : variants) {
      kernels::VariantCapScope cap(var);
      const std::string what = "prompt silu_mul " + kernels::variant_name(var) + " " + name(dt);
      expect_close(kernels::silu_mul(g, u, var), want, what);
      auto gg = g.detach().requires_grad_();
      kernels::silu_mul(gg, u).to(torch::kFloat32).sum().backward();
      ASSERT_TRUE(gg.grad().defined()) << what;
      EXPECT_FALSE(gg.grad().isnan().any().item<bool>()) << what;
    }
  }
}

TEST(KernelElementwise, SiluMulRoundsProductsToNearestEven) {
  // Gates above 20 give silu(v) = v exactly in 16-bit types, so each variant's output is the product v * u rounded
  // once; products of two 16-bit values often sit exactly halfway between two of them, where only round-half-even
  // agrees with libtorch.
  torch::manual_seed(12);
  for (auto dt : {torch::kBFloat16, torch::kFloat16}) {
    auto g = (torch::rand({4096}) * 20 + 20).to(dt), u = torch::randn({4096}).to(dt);
    auto want = (g.to(torch::kFloat32) * u.to(torch::kFloat32)).to(dt);
    for (auto var : testutil::cpu_variants())
      EXPECT_TRUE(torch::equal(kernels::silu_mul(g, u, var), want)) << kernels::variant_name(var) << " " << name(dt);
  }
}

TEST(KernelElementwise, RopeMatchesReferenceInItsLayout) {
  for (auto dt : kTypes)
    for (auto s : std::vector<std::vector<int64_t>>{{1, 9, 1, 64}, {2, 3, 5, 64}, {1, 4, 7, 6}}) {
      const int64_t B = s[0], H = s[1], T = s[2], D = s[3];
      torch::manual_seed(H * 7 + T);
      // q as the attention forms it: [B, T, H, D] in memory, viewed as [B, H, T, D].
      auto x = torch::randn({B, T, H, D}).to(dt).transpose(1, 2);
      auto ang = torch::rand({B, T, D}) * 6.28;
      auto c = ang.cos().to(dt), sn = ang.sin().to(dt);
      auto got = kernels::rope(x, c, sn);
      auto want = kernels::rope_reference(x, c, sn);
      const std::string what = "rope " + name(dt) + " D=" + std::to_string(D) + " T=" + std::to_string(T);
      // Products of two stored values and their sum round as the reference rounds them: identical.
      EXPECT_TRUE(torch::equal(got, want)) << what;
      // The layout of x is kept: [B, T, H, D] in memory, as the reference leaves it.
      EXPECT_EQ(got.is_contiguous(), want.is_contiguous()) << what;
      EXPECT_TRUE(got.transpose(1, 2).is_contiguous()) << what;
    }
}
