// The GEMV kernel variants against torch::linear.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/variants.h"
#include "kernels/gemv.h"

#include <ATen/Parallel.h>

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
                                     {8, 64, 1000, false}, {5, 33, 7, true},     {1, 1536, 576, false},
                                     {2, 7, 5, true},      {4, 5000, 24, false},  // no full 16-wide chunk; long rows
                                     {1, 80, 9, true},     {5, 48, 11, false}};   // an odd count of 16-wide chunks
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

// A row's result does not depend on how many rows share the call (the server batches sequences and promises
// each one, bit for bit, what it gets alone): every row of an n-row call equals the one-row call, for every
// variant, dtype and n up to the GEMV's limit, with and without a residual.
TEST(KernelGemv, EachRowIsWhatItIsAlone) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16})
    for (int64_t in : {576, 77}) {
      torch::manual_seed(in);
      auto x = torch::randn({8, in}).to(dt);
      auto w = (torch::randn({50, in}) * 0.05).to(dt);
      auto b = torch::randn({50}).to(dt), r = torch::randn({8, 50}).to(dt);
      for (auto var : cpu_variants())
        for (int64_t n = 2; n <= 8; ++n) {
          auto many = kernels::linear(x.narrow(0, 0, n), w, b, var);
          auto many_add = kernels::linear_add(x.narrow(0, 0, n), w, b, r.narrow(0, 0, n), var);
          for (int64_t j = 0; j < n; ++j) {
            const std::string what = kernels::variant_name(var) + " " + c10::toString(dt) + " in " + std::to_string(in) +
                                     " row " + std::to_string(j) + " of " + std::to_string(n);
            EXPECT_TRUE(many[j].equal(kernels::linear(x.narrow(0, j, 1), w, b, var)[0])) << what;
            EXPECT_TRUE(many_add[j].equal(kernels::linear_add(x.narrow(0, j, 1), w, b, r.narrow(0, j, 1), var)[0])) << what;
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

// Several matrices in one parallel region: each output equals its own linear() call bit for bit (the same
// rows go to the same kernel), over odd sizes, a bias on one matrix only, a strided weight, and 1-3 rows;
// outside the GEMV domain every output is torch::linear's.
TEST(KernelGemv, LinearManyEqualsSeparateCalls) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (int64_t n : {1, 3}) {
      torch::manual_seed(21 + n);
      auto x = torch::randn({n, 96}).to(dt);
      auto wide = torch::randn({24, 200}).to(dt);
      std::vector<torch::Tensor> ws = {torch::randn({70, 96}).to(dt), torch::randn({24, 96}).to(dt),
                                       wide.narrow(1, 50, 96)};
      std::vector<torch::Tensor> bs = {torch::Tensor(), torch::randn({24}).to(dt), torch::Tensor()};
      auto got = kernels::linear_many(x, ws, bs);
      ASSERT_EQ(got.size(), 3u);
      for (size_t i = 0; i < ws.size(); ++i) {
        EXPECT_TRUE(torch::equal(got[i], kernels::linear(x, ws[i], bs[i]))) << c10::toString(dt) << " matrix " << i;
        EXPECT_TRUE(torch::allclose(got[i].to(torch::kFloat32), torch::linear(x, ws[i], bs[i]).to(torch::kFloat32),
                                    dt == torch::kBFloat16 ? 5e-2 : 1e-4, dt == torch::kBFloat16 ? 5e-2 : 1e-4))
            << c10::toString(dt) << " matrix " << i;
      }
    }
  }
  // Rows enough for every thread: each streams a share, then the rest goes out in chunks that cross matrices.
  const int saved = at::get_num_threads();
  at::set_num_threads(3);
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    torch::manual_seed(29);
    auto x = torch::randn({1, 576}).to(dt);
    std::vector<torch::Tensor> ws = {torch::randn({400, 576}).to(dt), torch::randn({100, 576}).to(dt),
                                     torch::randn({77, 576}).to(dt)};
    auto got = kernels::linear_many(x, ws, {});
    for (size_t i = 0; i < ws.size(); ++i)
      EXPECT_TRUE(torch::allclose(got[i].to(torch::kFloat32), torch::linear(x, ws[i]).to(torch::kFloat32),
                                  dt == torch::kBFloat16 ? 5e-2 : 1e-4, dt == torch::kBFloat16 ? 5e-2 : 1e-4))
          << c10::toString(dt) << " matrix " << i;
  }
  at::set_num_threads(saved);
  auto x = torch::randn({9, 32});
  auto got = kernels::linear_many(x, {torch::randn({16, 32}), torch::randn({5, 32})}, {});
  EXPECT_EQ(got[1].sizes(), (std::vector<int64_t>{9, 5}));
}

TEST(KernelGemv, LinearAddRoundsAsLinearThenAdd) {
  // The residual is added to the product rounded to the storage type, then rounded again: bit for bit what
  // linear() followed by + gives, for every variant and type (one row, a few rows, a tail, a bias).
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (int64_t rows : {1, 3}) {
      for (bool with_bias : {false, true}) {
        torch::manual_seed(rows * 7 + with_bias);
        auto x = torch::randn({1, rows, 200}).to(dt);
        auto w = (torch::randn({301, 200}) * 0.1).to(dt);
        auto b = with_bias ? torch::randn({301}).to(dt) : torch::Tensor();
        auto r = torch::randn({1, rows, 301}).to(dt);
        for (auto var : cpu_variants()) {
          auto got = kernels::linear_add(x, w, b, r, var);
          EXPECT_TRUE(torch::equal(got, kernels::linear(x, w, b, var) + r))
              << kernels::variant_name(var) << " " << c10::toString(dt) << " rows " << rows << " bias " << with_bias;
        }
      }
    }
  }
  // Under autograd the sum is libtorch's, so gradients reach the residual.
  auto x = torch::randn({1, 4}), w = torch::randn({3, 4}), r = torch::randn({1, 3}).requires_grad_(true);
  kernels::linear_add(x, w, {}, r).sum().backward();
  ASSERT_TRUE(r.grad().defined());
  EXPECT_TRUE(torch::equal(r.grad(), torch::ones({1, 3})));
}

// Prompts and training take linear_matmul (more rows than the GEMV takes, or autograd). Every dtype must work on
// every variant the project dispatches to, whatever the CPU: libtorch 1.13 has no f16 GEMM on the CPU, so f16
// failed wherever linear_matmul handed it to torch::linear (AVX-512 CPUs, and the reference variant everywhere).
// The products and gradients are checked against f32 on the same rounded inputs.
TEST(KernelLinearMatmul, EveryDtypeOnEveryVariant) {
  auto variants = cpu_variants();
  variants.insert(variants.begin(), Variant::Reference);
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    torch::manual_seed(7);
    auto x = torch::randn({3, 11, 96}).to(dt);  // 33 rows: a matmul, not a GEMV
    auto w = (torch::randn({40, 96}) * 0.1).to(dt);
    auto b = torch::randn({40}).to(dt);
    auto f32 = [](const torch::Tensor& u) { return u.to(torch::kFloat32); };
    auto want = torch::linear(f32(x), f32(w), f32(b)).to(dt);
    for (auto var : variants) {
      kernels::VariantCapScope cap(var);
      const std::string what = kernels::variant_name(var) + " " + c10::toString(dt);
      expect_close(kernels::linear_matmul(x, w, b, var), want, dt, what);
      expect_close(kernels::linear(x, w, b), want, dt, what + " through linear()");

      // Autograd: the gradients of sum(y · g) reach x, W and b in their own dtype.
      auto xg = x.detach().requires_grad_(), wg = w.detach().requires_grad_(), bg = b.detach().requires_grad_();
      auto g = torch::randn({3, 11, 40}).to(dt);
      (kernels::linear(xg, wg, bg).to(torch::kFloat32) * f32(g)).sum().backward();
      ASSERT_EQ(xg.grad().scalar_type(), dt) << what;
      auto gx = torch::matmul(f32(g), f32(w)), gw = torch::matmul(f32(g).reshape({-1, 40}).t(), f32(x).reshape({-1, 96}));
      expect_close(xg.grad(), gx.to(dt), dt, what + " dL/dx");
      expect_close(wg.grad(), gw.to(dt), dt, what + " dL/dW");
      expect_close(bg.grad(), f32(g).sum(std::vector<int64_t>{0, 1}).to(dt), dt, what + " dL/db");
    }
  }
}
