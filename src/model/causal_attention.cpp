#include "model/causal_attention.h"

#include <limits>

#include "kernels/gemv.h"

namespace mha2mla::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Additive causal mask of a diagonal tile, built once per call: row i sees columns 0..i. Its leading n × n
// corner is the mask of a shorter last tile.
torch::Tensor diagonal_mask(int64_t n, const torch::Device& device) {
  return torch::full({n, n}, -std::numeric_limits<float>::infinity(), torch::kFloat32).triu(1).to(device);
}

// fp32 scores of query block [t0, t0 + n) against keys [0, t0 + n), causally masked:
// qb [B, Hkv, g·n, D] and kb [B, Hkv, t0 + n, D] -> [B, Hkv, g, n, t0 + n].
torch::Tensor block_scores(const torch::Tensor& qb, const torch::Tensor& kb, int64_t g, int64_t t0, int64_t n,
                           double scale, const torch::Tensor& diag) {
  const int64_t B = qb.size(0), Hkv = qb.size(1), t1 = t0 + n;
  auto s = kernels::matmul(qb, kb.transpose(2, 3)).to(torch::kFloat32).mul_(scale).view({B, Hkv, g, n, t1});
  s.narrow(-1, t0, n).add_(diag.narrow(0, 0, n).narrow(1, 0, n));
  return s;
}

// Query rows [t0, t0 + n) of every head of a group, as rows of their KV head: [B, Hkv, g·n, D].
torch::Tensor query_block(const torch::Tensor& qg, int64_t t0, int64_t n) {
  const int64_t B = qg.size(0), Hkv = qg.size(1), g = qg.size(2), D = qg.size(4);
  return qg.narrow(3, t0, n).reshape({B, Hkv, g * n, D});
}

class BlockwiseCausal : public torch::autograd::Function<BlockwiseCausal> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, double scale, int64_t block) {
    const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
    const int64_t Hkv = k.size(1), Dv = v.size(3), g = Hq / Hkv;
    auto qg = q.view({B, Hkv, g, T, D});
    auto out = torch::empty({B, Hkv, g, T, Dv}, q.options());
    auto lse = torch::empty({B, Hkv, g, T}, q.options().dtype(torch::kFloat32));
    const auto diag = diagonal_mask(std::min(block, T), q.device());
    for (int64_t t0 = 0; t0 < T; t0 += block) {
      const int64_t n = std::min(block, T - t0), t1 = t0 + n;
      auto s = block_scores(query_block(qg, t0, n), k.narrow(2, 0, t1), g, t0, n, scale, diag);  // [B, Hkv, g, n, t1]
      auto m = torch::logsumexp(s, -1, /*keepdim=*/true);                                   // [B, Hkv, g, n, 1]
      auto p = s.sub_(m).exp_().to(v.scalar_type()).view({B, Hkv, g * n, t1});
      out.narrow(3, t0, n).copy_(kernels::matmul(p, v.narrow(2, 0, t1)).view({B, Hkv, g, n, Dv}));
      lse.narrow(3, t0, n).copy_(m.squeeze(-1));
    }
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["block"] = block;
    ctx->save_for_backward({q, k, v, out, lse});
    return out.view({B, Hq, T, Dv});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t block = ctx->saved_data["block"].toInt();
    const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3);
    const int64_t Hkv = k.size(1), Dv = v.size(3), g = Hq / Hkv;
    auto qg = q.view({B, Hkv, g, T, D});
    auto dout = grads[0].contiguous().view({B, Hkv, g, T, Dv});
    // D_t = Σ dO·O per row: the softmax backward's correction term.
    auto delta = (dout.to(torch::kFloat32) * out.to(torch::kFloat32)).sum(-1);  // [B, Hkv, g, T]
    auto dq = torch::empty({B, Hkv, g, T, D}, q.options().dtype(torch::kFloat32));
    auto dk = torch::zeros({B, Hkv, T, D}, q.options().dtype(torch::kFloat32));
    auto dv = torch::zeros({B, Hkv, T, Dv}, q.options().dtype(torch::kFloat32));
    const auto t = q.scalar_type();
    const auto diag = diagonal_mask(std::min(block, T), q.device());
    for (int64_t t0 = 0; t0 < T; t0 += block) {
      const int64_t n = std::min(block, T - t0), t1 = t0 + n;
      auto qb = query_block(qg, t0, n);
      auto kb = k.narrow(2, 0, t1), vb = v.narrow(2, 0, t1);
      auto p = block_scores(qb, kb, g, t0, n, scale, diag)
                   .sub_(lse.narrow(3, t0, n).unsqueeze(-1))
                   .exp_();                                              // [B, Hkv, g, n, t1] fp32
      auto dob = dout.narrow(3, t0, n).reshape({B, Hkv, g * n, Dv});
      auto dp = kernels::matmul(dob, vb.transpose(2, 3)).to(torch::kFloat32).view({B, Hkv, g, n, t1});
      auto ds = dp.sub_(delta.narrow(3, t0, n).unsqueeze(-1)).mul_(p).mul_(scale).to(t).view({B, Hkv, g * n, t1});
      auto pt = p.to(t).view({B, Hkv, g * n, t1});
      dq.narrow(3, t0, n).copy_(kernels::matmul(ds, kb).view({B, Hkv, g, n, D}));
      dk.narrow(2, 0, t1).add_(kernels::matmul(ds.transpose(2, 3), qb));
      dv.narrow(2, 0, t1).add_(kernels::matmul(pt.transpose(2, 3), dob));
    }
    return {dq.view({B, Hq, T, D}).to(t), dk.to(k.scalar_type()), dv.to(v.scalar_type()), torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor causal_attention_blockwise(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         double scale, int64_t block) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention_blockwise: 4-d inputs expected");
  TORCH_CHECK(q.size(2) == k.size(2) && k.size(2) == v.size(2), "causal_attention_blockwise: T must equal S");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "causal_attention_blockwise: Hq must be a multiple of Hkv");
  TORCH_CHECK(block > 0, "causal_attention_blockwise: block must be positive");
  return BlockwiseCausal::apply(q.contiguous(), k.contiguous(), v.contiguous(), scale, block);
}

}  // namespace mha2mla::model
