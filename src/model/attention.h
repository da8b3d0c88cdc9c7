#pragma once
// The attention interface. The transformer only ever talks to an Attention through forward() and
// cache_spec(), so MHA/GQA, MLA and other cache layouts are interchangeable per layer.
#include <torch/torch.h>

#include <functional>
#include <memory>

#include "io/config.h"
#include "model/kv_cache.h"
#include "model/layers.h"

namespace mha2mla::model {

// What a layer needs besides its input; built once per forward by the transformer.
struct AttnContext {
  torch::Tensor cos, sin;   // [B, T, head_dim] for the new tokens' positions, compute dtype
  torch::Tensor mask;       // additive [B, 1, T, S] over all S visible slots, compute dtype
  int64_t start = 0;        // first slot of the new tokens (tokens already cached)
  int64_t layer = 0;
  KVCache* cache = nullptr; // null: no caching (training, scoring)
  AttnMode attn = AttnMode::Auto;
  // Optional observer of each layer's attention input (after input_layernorm), e.g. for calibration.
  const std::function<void(int64_t layer, const torch::Tensor& x)>* on_attn_input = nullptr;
};

// softmax(q kᵀ · scale + mask) v with grouped heads: q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv].
// Heads are grouped as HF repeat_kv does (query head j reads KV head j / g); scores go through fp32 softmax.
torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask, double scale);

class AttentionImpl : public torch::nn::Module {
 public:
  ~AttentionImpl() override = default;
  // x: [B, T, d] -> [B, T, d].
  virtual torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx) = 0;
  // The per-token buffers this layer caches, in the order forward() uses them.
  virtual std::vector<BufferSpec> cache_spec() const = 0;
};

// Standard HF Llama/Mistral/Qwen2/Qwen3 attention (MHA when n_kv == n_h, else GQA).
class GQAAttentionImpl : public AttentionImpl {
 public:
  GQAAttentionImpl(const io::ModelConfig& cfg, const torch::TensorOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx) override;
  // k and v, [n_kv, d_h] each; KIVI's axes: keys per channel, values per token.
  std::vector<BufferSpec> cache_spec() const override {
    return {{"k", n_kv_, d_h_, QuantAxis::Channel}, {"v", n_kv_, d_h_, QuantAxis::Token}};
  }

  Dense q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qwen3 only

 private:
  int64_t n_h_, n_kv_, d_h_;
};

// Picks the attention variant a config asks for.
std::shared_ptr<AttentionImpl> make_attention(const io::ModelConfig& cfg, int64_t layer,
                                              const torch::TensorOptions& opt);

}  // namespace mha2mla::model
