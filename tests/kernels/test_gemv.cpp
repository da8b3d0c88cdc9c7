// The GEMV kernel variants against torch::linear.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/variants.h"
#include "kernels/gemv.h"

using namespace mha2mla;
using kernels::Variant;
using testutil::cpu_variants;

namespace {

// The kernel accumulates in f32 like torch's CPU linear, in a different order; outputs are rounded to
// the storage type, so bf16/f16 may differ by one unit in the last place of the output.
void expect_close(const torch::Tensor& got, const torch::Tensor& want, torch::ScalarType dt, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  const double rtol = dt == torch::kBFloat16 ? 1.6e-2 : dt == torch::kFloat16 ? 2e-3 : 2e-5;
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  const double scale = w.abs().max().item<double>() + 1e-30;
  const double err = (g - w).abs().max().item<double>();
  EXPECT_LE(err, rtol * scale) << what << ": max |diff| " << err << " (max |want| " << scale << ")";
}

}  // namespace

TEST(KernelGemv, MatchesTorchLinear) {
  struct Shape {
    int64_t rows, in, out;
    bool bias;
  };
  const std::vector<Shape> shapes = {{1, 576, 576, false}, {1, 576, 1536, true}, {3, 577, 37, true},
                                     {8, 64, 1000, false}, {5, 33, 7, true},     {1, 1536, 576, false}};
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& s : shapes) {
      torch::manual_seed(s.in * 31 + s.out);
      auto x = torch::randn({s.rows, s.in}).to(dt);
      auto w = (torch::randn({s.out, s.in}) * 0.05).to(dt);
      auto b = s.bias ? torch::randn({s.out}).to(dt) : torch::Tensor();
      auto want = torch::linear(x.to(torch::kFloat32), w.to(torch::kFloat32), b.defined() ? b.to(torch::kFloat32) : b)
                      .to(dt);
      for (auto var : cpu_variants()) {
        auto got = kernels::linear(x, w, b, var);
        expect_close(got, want, dt,
                     kernels::variant_name(var) + " " + c10::toString(dt) + " rows " + std::to_string(s.rows) +
                         " in " + std::to_string(s.in) + " out " + std::to_string(s.out));
      }
    }
  }
}

TEST(KernelGemv, KeepsLeadingDimsAndStridedWeights) {
  torch::manual_seed(2);
  auto x = torch::randn({1, 1, 96});
  auto wbuf = torch::randn({50, 128});
  auto w = wbuf.narrow(1, 0, 96);  // rows 128 apart
  ASSERT_TRUE(kernels::gemv_applies(x, w, {}));
  for (auto var : cpu_variants()) {
    auto got = kernels::linear(x, w, {}, var);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{1, 1, 50}));
    expect_close(got, torch::linear(x, w), torch::kFloat32, "strided " + kernels::variant_name(var));
  }
}

TEST(KernelGemv, FallsBackOutsideItsDomain) {
  auto w = torch::randn({16, 32});
  EXPECT_FALSE(kernels::gemv_applies(torch::randn({9, 32}), w, {}));                      // a matmul
  EXPECT_FALSE(kernels::gemv_applies(torch::randn({1, 32}).to(torch::kBFloat16), w, {}));  // mixed dtypes
  EXPECT_FALSE(kernels::gemv_applies(torch::randn({1, 32}, torch::requires_grad()), w, {}));
  auto x = torch::randn({9, 32});
  EXPECT_TRUE(torch::allclose(kernels::linear(x, w, {}), torch::linear(x, w)));
}
