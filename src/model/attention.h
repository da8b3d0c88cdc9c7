#pragma once
// The attention interface. The transformer only ever talks to an Attention through forward() and
// cache_spec(), so MHA/GQA, MLA and other cache layouts are interchangeable per layer.
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <tuple>

#include "io/config.h"
#include "kernels/quant_attention.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/step_plan.h"

namespace mha2mla::model {

struct PagedBatch;

// What a layer needs besides its input; built once per forward by the transformer.
struct AttnContext {
  torch::Tensor cos, sin;   // [B, T, head_dim] for the new tokens' positions, compute dtype
  // The additive mask [B, 1, T, S] over all S visible slots, compute dtype, built on first use from the fields
  // below (undefined when need_mask is false): training with plain causal visibility never reads it.
  const torch::Tensor& mask() const;
  bool need_mask = false;
  int64_t new_tokens = 0;   // T
  torch::ScalarType dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  // The same visibility as the mask, for kernels that build it on the fly: new token t sits at slot start + t and
  // sees slot s <= start + t that is valid and (with a window) s > start + t − window.
  torch::Tensor slot_valid;  // [B, S] bool on the device; undefined = every slot valid
  int64_t window = 0;        // sliding window; 0 = none
  int64_t start = 0;        // first slot of the new tokens (tokens already cached)
  int64_t layer = 0;
  KVCache* cache = nullptr; // null: no caching (training, scoring)
  const PagedBatch* paged = nullptr;  // instead of cache: one new token of each of B sequences in a block pool
  AttnMode attn = AttnMode::Auto;
  bool fused = false;              // attention_core runs the fused kernels (inference), else the reference
  bool causal = false;             // visibility is plain causal over the new tokens alone (no cache, padding, window)
  double* attn_seconds = nullptr;  // when set, accumulates the time spent attending over the cache (bench)
  // Optional observer of each layer's attention input (after input_layernorm), e.g. for calibration.
  const std::function<void(int64_t layer, const torch::Tensor& x)>* on_attn_input = nullptr;

 private:
  mutable torch::Tensor mask_;
};

// Adds the wall time of its scope to *acc (when acc is set): the attention core of a layer, from the cache
// append to the attended output, for the benchmark's attention-step figures. Syncs the device first on GPUs.
class AttnTimer {
 public:
  AttnTimer(double* acc, const torch::Device& d);
  ~AttnTimer();

 private:
  double* acc_;
  torch::Device dev_;
  std::chrono::steady_clock::time_point t0_;
};

// softmax(q kᵀ · scale + mask) v with grouped heads: q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv].
// Heads are grouped as HF repeat_kv does (query head j reads KV head j / g); scores go through fp32 softmax.
torch::Tensor grouped_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask, double scale);

// The attention core every module calls: q [B, Hq, T, D], k [B, Hkv, S, D], v [B, Hkv, S, Dv] -> [B, Hq, T, Dv].
// With ctx.fused, the kernels of src/kernels (flash-style prefill, split-KV decoding; visibility from ctx.start,
// ctx.slot_valid and ctx.window, so no mask is built); when training (grad mode) with plain causal visibility,
// causal_attention_blockwise, whose memory does not grow with T²; otherwise grouped_attention with ctx.mask().
torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const AttnContext& ctx, double scale);

// Decoding reads a quantized buffer in place: the kernels' view of its blocks and residual (same layout).
kernels::QuantizedKV quantized_kv(const SlotBuffer& b);
// Whether decoding T new tokens can read these buffers in place: both quantized, some blocks already.
bool reads_quantized_in_place(const AttnContext& ctx, int64_t T, const SlotBuffer& a, const SlotBuffer& b);

class AttentionImpl : public torch::nn::Module {
 public:
  ~AttentionImpl() override = default;
  // x: [B, T, d] -> [B, T, d], plus `residual` ([B, T, d]) when it is defined: the layer's residual connection,
  // added by the output projection as it stores each value (kernels::linear_add).
  virtual torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) = 0;
  // The per-token buffers this layer caches, in the order forward() uses them.
  virtual std::vector<BufferSpec> cache_spec() const = 0;
  // This layer's part of the fused decode step (model/step_plan.h): why it cannot take part in a step of one
  // token under ctx (ctx.cache set) in dtype t, "" when it can; the scratch its part needs; and its part of the
  // plan, over its two cache buffers b0 and b1 (room for the token reserved). By default a layer cannot.
  virtual std::string step_unsupported(const AttnContext& ctx, torch::ScalarType t) {
    (void)ctx, (void)t;
    return "has an attention without a fused decode step";
  }
  virtual StepScratch step_scratch() const { return {}; }
  virtual void plan_step(const StepIO& io, SlotBuffer& b0, SlotBuffer& b1, const AttnStepPlan& p) {
    (void)io, (void)b0, (void)b1, (void)p;
  }
};

// Standard HF Llama/Mistral/Qwen2/Qwen3 attention (MHA when n_kv == n_h, else GQA).
class GQAAttentionImpl : public AttentionImpl {
 public:
  GQAAttentionImpl(const io::ModelConfig& cfg, const torch::TensorOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx, const torch::Tensor& residual) override;
  std::vector<BufferSpec> cache_spec() const override { return spec(n_kv_, d_h_); }
  std::string step_unsupported(const AttnContext& ctx, torch::ScalarType t) override;
  StepScratch step_scratch() const override;
  void plan_step(const StepIO& io, SlotBuffer& b0, SlotBuffer& b1, const AttnStepPlan& p) override;
  // k and v, [n_kv, d_h] each; KIVI's axes: keys per channel, values per token.
  static std::vector<BufferSpec> spec(int64_t n_kv, int64_t d_h) {
    return {{"k", n_kv, d_h, QuantAxis::Channel, BufferRole::Key}, {"v", n_kv, d_h, QuantAxis::Token, BufferRole::Value}};
  }

  Dense q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // qwen3 only

 private:
  // The attention of B sequences' T tokens from their projections qkv ([B, T, n_h·d_h], [B, T, n_kv·d_h] twice)
  // under ctx: [B, T, n_h·d_h], before the output projection.
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnContext& ctx);
  // Its two halves: the heads normed (qwen3) and rotated by cos/sin [B, T, d_h] -> q [B, n_h, T, d_h], k and v
  // [B, n_kv, T, d_h]; then appended to ctx's cache and attended -> [B, T, n_h·d_h].
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> rotated(const torch::Tensor& q, const torch::Tensor& k,
                                                                  const torch::Tensor& v, const torch::Tensor& cos,
                                                                  const torch::Tensor& sin);
  torch::Tensor cached_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v, const AttnContext& ctx);
  int64_t n_h_, n_kv_, d_h_;
};

// The cache buffers of a layer of this config, without building the model (inspect, memory planning).
std::vector<BufferSpec> cache_spec_for(const io::ModelConfig& cfg);

// Picks the attention variant a config asks for.
std::shared_ptr<AttentionImpl> make_attention(const io::ModelConfig& cfg, int64_t layer,
                                              const torch::TensorOptions& opt);

}  // namespace mha2mla::model
