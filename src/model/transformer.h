#pragma once
// The decoder-only Llama-family transformer. Module and parameter names follow the HF checkpoint
// names exactly ("model.layers.3.self_attn.q_proj.weight"), so loading is a name-by-name copy.
#include <torch/torch.h>

#include <memory>
#include <string>

#include "io/config.h"
#include "io/safetensors.h"
#include "model/attention.h"
#include "model/decode_step.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/paged_cache.h"
#include "model/runtime_options.h"

namespace mha2mla::model {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const io::ModelConfig& cfg, int64_t layer, const torch::TensorOptions& opt);
  torch::Tensor forward(const torch::Tensor& x, const AttnContext& ctx);
  std::shared_ptr<AttentionImpl> self_attn;
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

class BackboneImpl : public torch::nn::Module {
 public:
  BackboneImpl(const io::ModelConfig& cfg, const torch::TensorOptions& opt);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

class TransformerImpl : public torch::nn::Module {
 public:
  TransformerImpl(const io::ModelConfig& cfg, torch::ScalarType dtype, torch::Device device = torch::kCPU);

  // ids [B, T] int64. `valid` [B, T] bool marks real tokens (false = left padding); undefined = all real.
  // With a cache, the tokens are appended to it. Returns the final-norm hidden states [B, T, d].
  torch::Tensor hidden(const torch::Tensor& ids, KVCache* cache = nullptr, const torch::Tensor& valid = {});
  // Logits [.., V] in fp32 from hidden states.
  torch::Tensor logits(const torch::Tensor& hidden);
  // The most sequences one batched decode step (decode_paged) takes: the GEMV keeps that many rows apart.
  static constexpr int64_t kMaxDecodeBatch = 8;
  // One decode step of up to kMaxDecodeBatch sequences over a block pool (the server's paged cache): ids[b] is
  // appended to batch.seqs[b], whose prompt was prefilled into a KVCache and loaded (PagedSequence::load).
  // Returns the final-norm hidden states [B, 1, d]. Row b is bit for bit what the step gives that sequence alone:
  // the GEMV computes each row on its own, and the paged attention each sequence over its own blocks.
  torch::Tensor decode_paged(const std::vector<int64_t>& ids, const PagedBatch& batch);
  // A pool of `blocks` blocks of `block_tokens` tokens for every layer's cache, stored as runtime().cache says.
  std::unique_ptr<BlockPool> make_block_pool(int64_t blocks, int64_t block_tokens) const;
  torch::Tensor forward(const torch::Tensor& ids, KVCache* cache = nullptr, const torch::Tensor& valid = {}) {
    return logits(hidden(ids, cache, valid));
  }

  // A cache for `batch` rows, stored as runtime().cache says (or as `opt` says).
  std::unique_ptr<KVCache> make_cache(int64_t batch) const { return make_cache(batch, runtime_.cache); }
  std::unique_ptr<KVCache> make_cache(int64_t batch, const CacheOptions& opt) const;
  std::vector<std::vector<BufferSpec>> cache_specs() const;  // per layer
  // Device and dtype are fixed at construction; the cache and attention choices may change between runs.
  const RuntimeOptions& runtime() const { return runtime_; }
  void set_cache_options(const CacheOptions& c) { runtime_.cache = c; }
  void set_attn_mode(AttnMode a) { runtime_.attn = a; }
  void set_reference_attention(bool r) { runtime_.reference_attention = r; }
  void set_decode_step(DecodeStepMode s) { runtime_.decode_step = s; }
  const io::ModelConfig& config() const { return cfg_; }
  torch::ScalarType dtype() const { return dtype_; }
  torch::Device device() const { return device_; }
  const torch::Tensor& lm_head_weight() const;

  Backbone model{nullptr};
  Dense lm_head{nullptr};  // null when tied to the embeddings
  // Called with each layer's attention input during hidden(); empty = off.
  std::function<void(int64_t layer, const torch::Tensor& x)> attn_input_hook;
  // When set, accumulates the seconds spent in attention over the cache (see AttnTimer); null = off.
  double* attn_seconds = nullptr;
  // Decode steps of one sequence that ran as one fused step (DecodeStep), and those that ran layer by layer with
  // the reason the fused step did not apply the last time (DecodeStep::unsupported, or "--decode-step layers").
  int64_t fused_decode_steps = 0;
  int64_t layer_decode_steps = 0;
  std::string layer_decode_reason;

 private:
  // The attention context of a forward over B x T tokens: positions, validity, masks, RoPE tables. With a
  // cache it begins the cache's step (the caller ends it with end_step(T) after the layers).
  AttnContext context(int64_t B, int64_t T, KVCache* cache, const torch::Tensor& valid);

  io::ModelConfig cfg_;
  torch::ScalarType dtype_;
  torch::Device device_;
  RuntimeOptions runtime_;
  torch::Tensor inv_freq_;
  std::unique_ptr<DecodeStep> decode_step_;  // made on the first step it serves
};
TORCH_MODULE(Transformer);

// Loads every parameter from the checkpoint, checking names and shapes against the config. On the CPU, a tensor
// stored in the compute dtype becomes a zero-copy (copy-on-write) view of the mapped file, which the parameter
// keeps alive; other tensors are converted one at a time and their source pages released.
void load_weights(TransformerImpl& m, const io::Checkpoint& ckpt);

// Reads DIR/config.json and the weights onto rt.device in rt.dtype (compute and storage precision).
Transformer load_model(const std::string& dir, const RuntimeOptions& rt);
Transformer load_model(const std::string& dir, torch::ScalarType dtype, torch::Device device = torch::kCPU);

// Token ids [B, T] on the host: all inside the vocabulary, else a clear error. Checked once per prompt.
void check_token_ids(const torch::Tensor& ids, int64_t vocab_size);

// Random init as HF does for Llama: N(0, std) for matrices and embeddings, ones for norms, zeros for biases.
void init_weights(TransformerImpl& m, uint64_t seed, double std = 0.02);

// Writes DIR/config.json and the weights (sharded above max_shard_bytes when > 0), each file atomically.
void save_model(TransformerImpl& m, const std::string& dir, uint64_t max_shard_bytes = 0);

// All weights as HF-named tensors, for saving.
io::NamedTensors named_weights(TransformerImpl& m);

}  // namespace mha2mla::model
