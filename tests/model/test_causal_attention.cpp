// The blockwise causal attention used in training against grouped_attention with an explicit causal mask:
// outputs and the gradients of q, k and v, for GQA groups of 1, 3 and 8, lengths that are and are not
// multiples of the block, in f32 and bf16.
#include <gtest/gtest.h>

#include <limits>

#include "model/attention.h"
#include "model/causal_attention.h"

using namespace mha2mla;

namespace {

struct Case {
  int64_t hkv, g, T, block;
  torch::ScalarType dtype;
};

void check_case(const Case& c) {
  torch::manual_seed(7 + c.T + c.g);
  const int64_t B = 2, D = 16, Dv = 12;
  auto make = [&](int64_t h, int64_t d) {
    return torch::randn({B, h, c.T, d}).to(c.dtype).requires_grad_(true);
  };
  auto q = make(c.hkv * c.g, D), k = make(c.hkv, D), v = make(c.hkv, Dv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto mask = torch::full({c.T, c.T}, -std::numeric_limits<float>::infinity()).triu(1).to(c.dtype).view({1, 1, c.T, c.T});
  auto ref = model::grouped_attention(q, k, v, mask, scale);
  auto got = model::causal_attention_blockwise(q, k, v, scale, c.block);
  ASSERT_EQ(got.sizes(), ref.sizes());
  ASSERT_EQ(got.scalar_type(), c.dtype);
  const bool f32 = c.dtype == torch::kFloat32;
  const double tol = f32 ? 2e-5 : 3e-2;
  EXPECT_LT((got.to(torch::kFloat32) - ref.to(torch::kFloat32)).abs().max().item<double>(), tol);

  auto w = torch::randn(ref.sizes()).to(c.dtype);
  auto grads = [&](const torch::Tensor& out, const std::vector<torch::Tensor>& wrt) {
    return torch::autograd::grad({(out.to(torch::kFloat32) * w.to(torch::kFloat32)).sum()}, wrt);
  };
  auto gr = grads(ref, {q, k, v}), gg = grads(got, {q, k, v});
  // The truth: the masked reference in f32 on the same (rounded) inputs. In bf16 both paths round their
  // matmuls, at different points and with CPU-dependent accumulation (the bf16 reference itself is 0.5-4 %
  // off on an AVX2 CPU), so the blockwise gradients are held to the f32 truth, not to the bf16 reference.
  auto q32 = q.detach().to(torch::kFloat32).requires_grad_(true), k32 = k.detach().to(torch::kFloat32).requires_grad_(true),
       v32 = v.detach().to(torch::kFloat32).requires_grad_(true);
  auto g32 = grads(model::grouped_attention(q32, k32, v32, mask.to(torch::kFloat32), scale), {q32, k32, v32});
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    auto t = g32[i], size = g32[i].abs().max().clamp_min(1e-12);
    const double err_got = ((gg[i].to(torch::kFloat32) - t).abs().max() / size).item<double>();
    const double err_ref = ((gr[i].to(torch::kFloat32) - t).abs().max() / size).item<double>();
    const double tol = f32 ? 1e-5 : 3e-2;
    EXPECT_LT(err_got, tol) << names[i] << " hkv=" << c.hkv << " g=" << c.g << " T=" << c.T
                            << " (reference's own error " << err_ref << ")";
  }
}

}  // namespace

TEST(CausalAttention, MatchesMaskedReferenceF32) {
  for (Case c : {Case{3, 1, 37, 8, torch::kFloat32}, Case{1, 3, 64, 16, torch::kFloat32},
                 Case{2, 8, 50, 16, torch::kFloat32}, Case{2, 3, 5, 256, torch::kFloat32}})
    check_case(c);
}

TEST(CausalAttention, MatchesMaskedReferenceBF16) {
  for (Case c : {Case{3, 1, 41, 16, torch::kBFloat16}, Case{1, 8, 33, 8, torch::kBFloat16}}) check_case(c);
}

// A block of one row and a block longer than the sequence give the same result: the recurrence does not
// depend on where blocks start.
TEST(CausalAttention, BlockSizeDoesNotChangeTheResult) {
  torch::manual_seed(3);
  auto q = torch::randn({1, 6, 29, 8}), k = torch::randn({1, 2, 29, 8}), v = torch::randn({1, 2, 29, 8});
  auto a = model::causal_attention_blockwise(q, k, v, 0.3, 1);
  auto b = model::causal_attention_blockwise(q, k, v, 0.3, 1000);
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-5);
}
