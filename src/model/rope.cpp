#include "model/rope.h"

#include <cmath>

#include "kernels/elementwise.h"

namespace mha2mla::model {

torch::Tensor rope_inv_freq(const io::ModelConfig& cfg) {
  const int64_t d = cfg.head_dim;
  auto idx = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32);
  auto inv = 1.0 / torch::pow(torch::tensor(cfg.rope_theta, torch::kFloat32), idx / static_cast<double>(d));
  const auto& rs = cfg.rope_scaling;
  if (rs.type == "linear") {
    inv = inv / rs.factor;
  } else if (rs.type == "llama3") {
    // Long wavelengths are slowed by `factor`, short ones kept, and the band between is interpolated.
    const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv;
    auto scaled = torch::where(wavelen > low_wavelen, inv / rs.factor, inv);
    auto smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    auto medium = torch::logical_not(wavelen < high_wavelen) & torch::logical_not(wavelen > low_wavelen);
    inv = torch::where(medium, smoothed, scaled);
  }
  return inv.contiguous();
}

std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inv_freq, const torch::Tensor& positions,
                                                     torch::ScalarType dtype) {
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq.to(positions.device()).view({1, 1, -1});
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return kernels::rope(x, cos, sin);
}

}  // namespace mha2mla::model
