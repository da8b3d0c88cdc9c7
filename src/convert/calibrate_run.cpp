// Calibration proper: running the model over text and accumulating the statistics (calibrate.cpp holds the
// statistics' file format, which the parsers need without the model).
#include <algorithm>
#include <functional>
#include <memory>

#include "convert/calibrate.h"
#include "util/error.h"

namespace mha2mla::convert {

namespace {

std::shared_ptr<model::GQAAttentionImpl> gqa_layer(model::TransformerImpl& m, int64_t l) {
  auto a = std::dynamic_pointer_cast<model::GQAAttentionImpl>(m.model->layers->at<model::DecoderLayerImpl>(l).self_attn);
  check(a != nullptr, "calibration needs an unconverted model (layer " + std::to_string(l) +
                          " does not use standard multi-head attention)");
  return a;
}

// Restores the model's attention-input hook on every exit path.
struct HookGuard {
  model::TransformerImpl& m;
  std::function<void(int64_t, const torch::Tensor&)> saved;
  explicit HookGuard(model::TransformerImpl& m) : m(m), saved(m.attn_input_hook) {}
  ~HookGuard() { m.attn_input_hook = saved; }
};

// Mean over rows of ||(v[i], v[i + d_h/2])|| per head: y [N, heads*d_h] -> sum over rows [heads, d_h/2] fp64.
torch::Tensor pair_norm_sum(const torch::Tensor& y, int64_t heads, int64_t d_h) {
  auto v = y.reshape({y.size(0), heads, 2, d_h / 2});
  return v.norm(2, {2}).to(torch::kFloat64).sum(0);
}

}  // namespace

CalibStats calibrate(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t samples, int64_t ctx,
                     const std::function<void(int64_t done, int64_t total)>& progress) {
  check(samples >= 1, "calibration needs at least 1 sample, got " + std::to_string(samples));
  check(ctx >= 1, "calibration context must be at least 1 token, got " + std::to_string(ctx));
  const int64_t n = static_cast<int64_t>(ids.size());
  check(n >= ctx, "calibration text has " + std::to_string(n) + " tokens, need at least " + std::to_string(ctx));
  const auto& c = m.config();
  const int64_t L = c.num_layers, n_h = c.num_heads, n_kv = c.num_kv_heads, d_h = c.head_dim, d = c.hidden_size;
  check(d_h % 2 == 0, "head_dim " + std::to_string(d_h) + " must be even for RoPE");

  torch::NoGradGuard ng;
  std::vector<std::shared_ptr<model::GQAAttentionImpl>> attn;
  for (int64_t l = 0; l < L; ++l) attn.push_back(gqa_layer(m, l));

  const int64_t windows = std::min(samples, n / ctx);
  // About a tenth held out (rounded half up), at least one once there are two windows to split.
  const int64_t heldout = windows >= 2 ? std::max<int64_t>(1, (windows + 5) / 10) : 0;
  const int64_t train = windows - heldout;

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(m.device());
  auto q_sum = torch::zeros({L, n_h, d_h / 2}, f64), k_sum = torch::zeros({L, n_kv, d_h / 2}, f64);
  Covariances cov(L, d), cov_ho(L, d);

  bool in_heldout = false;
  HookGuard guard(m);
  m.attn_input_hook = [&](int64_t l, const torch::Tensor& x) {
    auto rows = x.reshape({-1, d});
    if (in_heldout) {
      cov_ho.add(l, rows);
      return;
    }
    cov.add(l, rows);
    // The projections in fp32 whatever the model computes in; the weights are cast per call, so a bf16 model
    // does not carry fp32 copies of every layer's q/k.
    auto xf = rows.to(torch::kFloat32);
    const auto& a = *attn[l];
    auto f32 = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kFloat32) : t; };
    q_sum[l] += pair_norm_sum(torch::linear(xf, f32(a.q_proj->weight), f32(a.q_proj->bias)), n_h, d_h);
    k_sum[l] += pair_norm_sum(torch::linear(xf, f32(a.k_proj->weight), f32(a.k_proj->bias)), n_kv, d_h);
  };
  auto all = torch::tensor(ids, torch::kInt64);
  for (int64_t w = 0; w < windows; ++w) {
    in_heldout = w >= train;
    m.hidden(all.narrow(0, w * ctx, ctx).unsqueeze(0));
    if (progress) progress(w + 1, windows);
  }

  CalibStats s;
  s.tokens = train * ctx;
  s.heldout_tokens = heldout * ctx;
  s.samples = windows;
  s.ctx = ctx;
  s.q_norm = (q_sum / static_cast<double>(s.tokens)).to(torch::kCPU, torch::kFloat32);
  s.k_norm = (k_sum / static_cast<double>(s.tokens)).to(torch::kCPU, torch::kFloat32);
  s.cov = std::move(cov);
  s.cov_heldout = std::move(cov_ho);
  return s;
}

}  // namespace mha2mla::convert
