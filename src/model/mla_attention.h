#pragma once
// Multi-head Latent Attention converted from MHA/GQA (MHA2MLA). Per layer:
//   q = W_q' x (rows permuted to [rope dims of all heads | nope dims of all heads])
//   k_r = RoPE_sel(W_kr x)                    per KV head, only the kept frequency pairs rotate
//   c = W_dkv x                                the latent (split: [W_dk x ; W_dv x])
//   k_nope = W_uk c + b,  v = W_uv c + b      reconstructed per KV head
// Only c and the rotated k_r are cached; K and V are materialised from them when attending.
#include <torch/torch.h>

#include "io/config.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/layers.h"

namespace mha2mla::model {

// The latent c [B, 1, cap, L] and rotated k_r [B, n_kv, cap, r], grown by doubling.
class LatentLayerCache : public LayerCache {
 public:
  // Writes c [B, T, L] and k_r [B, n_kv, T, r] at slot `start`; returns views of slots [0, start+T):
  // c [B, S, L] and k_r [B, n_kv, S, r].
  std::pair<torch::Tensor, torch::Tensor> append(const torch::Tensor& c, const torch::Tensor& k_r, int64_t start);
  int64_t bytes_for(int64_t slots) const override;

 private:
  torch::Tensor c_, kr_;
};

// The low-rank K/V path; parameter names follow the reference ("kv_proj.down_kv.weight", ...).
class LowRankKVImpl : public torch::nn::Module {
 public:
  LowRankKVImpl(const io::ModelConfig& cfg, const torch::TensorOptions& opt);
  torch::Tensor latent(const torch::Tensor& x);                             // [.., latent_dim()]
  std::pair<torch::Tensor, torch::Tensor> up(const torch::Tensor& c);       // k_nope [.., n_kv*d_c], v [.., n_kv*d_h]
  int64_t latent_dim() const { return latent_dim_; }

  Dense down_kv{nullptr};                // joint / activation
  Dense down_k{nullptr}, down_v{nullptr};  // split
  Dense up_k{nullptr}, up_v{nullptr};    // "none": these read x directly and the "latent" is [k_nope | v]

 private:
  std::string method_;
  int64_t latent_dim_ = 0, split_ = 0;
};
TORCH_MODULE(LowRankKV);

class MLAAttentionImpl : public AttentionImpl {
 public:
  MLAAttentionImpl(const io::ModelConfig& cfg, int64_t layer, const torch::TensorOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx) override;
  std::unique_ptr<LayerCache> make_cache() const override { return std::make_unique<LatentLayerCache>(); }

  Dense q_proj{nullptr}, k_r_proj{nullptr}, o_proj{nullptr};
  LowRankKV kv_proj{nullptr};

  // Kept RoPE dims of each query head [n_h, r] and KV head [n_kv, r], indices into 0..d_h-1.
  const torch::Tensor& q_rope_dims() const { return q_dims_; }
  const torch::Tensor& k_rope_dims() const { return k_dims_; }

 private:
  int64_t n_h_, n_kv_, d_h_, r_;
  torch::Tensor q_dims_, k_dims_;
};

}  // namespace mha2mla::model
