#pragma once
// Multi-head Latent Attention converted from MHA/GQA (MHA2MLA). Per layer:
//   q = W_q' x (rows permuted to [rope dims of all heads | nope dims of all heads])
//   k_r = RoPE_sel(W_kr x)                    per KV head, only the kept frequency pairs rotate
//   c = W_dkv x                                the latent (split: [W_dk x ; W_dv x])
//   k_nope = W_uk c + b,  v = W_uv c + b      reconstructed per KV head
// Only c and the rotated k_r are cached. Attention either materialises K and V from them (the reference, and
// prefill), or absorbs W_uk into the query and W_uv into the output, so scores and outputs are computed
// against c directly (decoding): q_nope·(W_uk c + b_k) = (W_ukᵀ q_nope)·c + const, and Σ p·(W_uv c + b_v) =
// W_uv (Σ p c) + b_v since Σ p = 1; the constant drops out of the softmax.
#include <torch/torch.h>

#include "io/config.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "model/layers.h"

namespace mha2mla::model {

// The low-rank K/V path; parameter names follow the reference ("kv_proj.down_kv.weight", ...).
class LowRankKVImpl : public torch::nn::Module {
 public:
  LowRankKVImpl(const io::ModelConfig& cfg, const torch::TensorOptions& opt);
  torch::Tensor latent(const torch::Tensor& x);                             // [.., latent_dim()]
  std::pair<torch::Tensor, torch::Tensor> up(const torch::Tensor& c);       // k_nope [.., n_kv*d_c], v [.., n_kv*d_h]
  int64_t latent_dim() const { return latent_dim_; }
  bool absorbable() const { return method_ != "none"; }  // "none" caches full-rank K/V: nothing to absorb
  bool split() const { return method_ == "split"; }      // c = [c_k | c_v]
  // The parts of c that up_k and up_v read: [.., Lk] and [.., Lv] (the same tensor for a joint latent).
  torch::Tensor key_part(const torch::Tensor& c) const;
  torch::Tensor value_part(const torch::Tensor& c) const;

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
  torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) override;
  std::vector<BufferSpec> cache_spec() const override { return spec_; }
  std::string step_unsupported(const AttnContext& ctx, torch::ScalarType t) override;
  StepScratch step_scratch() const override;
  void plan_step(const StepIO& io, SlotBuffer& b0, SlotBuffer& b1, const AttnStepPlan& p) override;
  // c [1, latent_dim] (shared by all heads) and k_r [n_kv, r]. Default axes chosen by measured perplexity (docs/serving.md).
  static std::vector<BufferSpec> spec(const io::ModelConfig& cfg) {
    return {{"c", 1, cfg.mla.latent_dim(cfg.num_kv_heads, cfg.head_dim), QuantAxis::Token, BufferRole::Latent},
            {"k_r", cfg.num_kv_heads, cfg.mla.rope_dim, QuantAxis::Channel, BufferRole::RotaryKey}};
  }

  Dense q_proj{nullptr}, k_r_proj{nullptr}, o_proj{nullptr};
  LowRankKV kv_proj{nullptr};

  // Whether inference decoding folds W_uk and W_uv into the projections (AbsorbedWeights below): only when that
  // does not grow the weights a step streams, per head L query rows and L output columns for d_c and d_h.
  // Wide latents (e.g. of MHA models) keep the per-step products.
  bool folds_weights() const { return 2 * kv_proj->latent_dim() <= 2 * d_h_ - r_; }

  // Kept RoPE dims of each query head [n_h, r] and KV head [n_kv, r], indices into 0..d_h-1.
  const torch::Tensor& q_rope_dims() const { return q_dims_; }
  const torch::Tensor& k_rope_dims() const { return k_dims_; }

  // Inference decoding with the weights absorbed once, as DeepSeek serves MLA: W_uk folded into the query
  // projection and W_uv into the output projection, so a step runs two GEMVs around the latent kernel instead
  // of q_proj, two per-head matmuls and o_proj. Rebuilt when a source weight changes (fine-tuning, .to()).
  struct AbsorbedWeights {
    torch::Tensor w_q, b_q;      // [n_h·r + n_h·L, hidden]: q_proj's RoPE rows, then W_ukᵀ W_q,nope per head
    torch::Tensor w_o, b_o;      // [hidden, n_h·L]: W_o,h W_uv per head; b_o also carries W_o b_uv
    std::vector<int64_t> stamp;  // version, address and dtype of each source weight
  };
  const AbsorbedWeights& absorbed_weights();
  // Whether a decode step of one token under ctx (with a cache) runs absorbed over folded weights: the path
  // the fused decode step (model/decode_step.h) reproduces.
  bool decodes_absorbed(const AttnContext& ctx) const { return folds_weights() && use_absorbed(ctx, 1); }

 private:
  int64_t n_h_, n_kv_, d_h_, r_;
  torch::Tensor q_dims_, k_dims_;
  std::vector<BufferSpec> spec_;

  AbsorbedWeights absorbed_;
  torch::Tensor decode_absorbed(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual);
  // decode_absorbed's middle for one sequence: from its absorbed query q [1, T, n_h·(r + L)], the projection
  // of its k_r [1, T, n_kv·r] and its latent c [1, T, L], appended to its cache: o_lat [1, T, n_h·L].
  torch::Tensor absorbed_attend(const torch::Tensor& q, const torch::Tensor& k_r_lin, const torch::Tensor& c,
                                const AttnContext& ctx);
  // Its second half, from the rotated q_r [1, n_h, T, r] and k_r [1, n_kv, T, r].
  torch::Tensor absorbed_cached(const torch::Tensor& q, const torch::Tensor& q_r, const torch::Tensor& k_r,
                                const torch::Tensor& c, const AttnContext& ctx);

  // q [B, T, n_h·r + ...] (RoPE rows first) -> rotated q_r [B, n_h, T, r]; x -> rotated k_r [B, n_kv, T, r].
  torch::Tensor rotated_queries(const torch::Tensor& q, const torch::Tensor& cos, const torch::Tensor& sin) const;
  torch::Tensor rotated_keys(const torch::Tensor& x, const AttnContext& ctx);
  torch::Tensor rotate_keys(const torch::Tensor& k_r_lin, const torch::Tensor& cos,
                            const torch::Tensor& sin) const;  // k_r_proj(x) [B, T, n_kv·r] -> rotated

  bool use_absorbed(const AttnContext& ctx, int64_t T) const;
  // q_r [B, n_h, T, r] (rotated), q_c [B, n_h, T, d_c]; c [B, S, L], k_r [B, n_kv, S, r] -> [B, n_h, T, d_h].
  torch::Tensor attend_materialized(const torch::Tensor& q_r, const torch::Tensor& q_c, const torch::Tensor& c,
                                    const torch::Tensor& k_r, const AttnContext& ctx);
  // With cb/kb (quantized cache buffers holding quantized blocks, fused decoding), c and k_r are not read:
  // the kernel dequantizes the cache in registers.
  torch::Tensor attend_absorbed(const torch::Tensor& q_r, const torch::Tensor& q_c, const torch::Tensor& c,
                                const torch::Tensor& k_r, const AttnContext& ctx, const SlotBuffer* cb = nullptr,
                                const SlotBuffer* kb = nullptr);
};

}  // namespace mha2mla::model
