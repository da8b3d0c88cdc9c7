#pragma once
// The decoding cache. Batch bookkeeping (slot validity, next positions) is shared by all layers; each layer
// holds the named per-token buffers its attention declares (GQA: k, v; MLA: c, k_r), every one stored in the
// chosen CacheType. No attention module knows how a buffer is stored: it appends and reads tensors.
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/quant.h"
#include "model/runtime_options.h"

namespace mha2mla::model {

// What a buffer holds, for the formats that treat buffers differently (fp8-flashmla: MLA only, k_r in bf16).
enum class BufferRole { Key, Value, Latent, RotaryKey };

// A per-token buffer as an attention declares it: `heads` rows of `width` values per token.
struct BufferSpec {
  std::string name;   // "k", "v", "c", "k_r"
  int64_t heads = 1;
  int64_t width = 0;
  QuantAxis axis = QuantAxis::Token;  // default quantization axis; --cache-axis overrides it
  BufferRole role = BufferRole::Key;
};

// How one buffer is stored, resolved from the CacheOptions.
struct Storage {
  CacheType type = CacheType::F32;
  QuantAxis axis = QuantAxis::Token;
  int64_t group = 64;  // the format's own where it fixes one (fp8-flashmla: 128)
  int64_t residual = 128;
  QuantMethod quant = QuantMethod::MinMax;
};

// The float cache type that stores `t` as it is (f32, bf16 or f16).
CacheType compute_cache_type(torch::ScalarType t);
// Rows of scales (and zero points) along the slot axis that `tokens` quantized slots of storage `st` take: one per
// token, or one per per-channel group of tokens.
inline int64_t scale_rows(const Storage& st, int64_t tokens) {
  return st.axis == QuantAxis::Token ? tokens : tokens / st.group;
}
// Bytes a tensor holds (0 when undefined).
inline int64_t tensor_bytes(const torch::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

// Resolves a buffer's storage: its own type/axis override, else --cache-type (rotary keys as that format stores
// them), else the compute dtype. Checks the combination: a format for MLA buffers only, a per-channel axis whose
// residual is not a positive multiple of the group.
Storage resolve_storage(const BufferSpec& spec, const CacheOptions& opt, torch::ScalarType compute);
// Bytes per cached token of one layer's buffers under `opt`, scales and zero points included.
double bytes_per_token(const std::vector<BufferSpec>& specs, const CacheOptions& opt, torch::ScalarType compute);

// One buffer of one layer: [B, heads, slots, width] in its storage type. Float types keep one growing tensor.
// Quantized types keep quantized blocks plus a compute-dtype residual of the newest tokens: when the residual
// reaches `residual` tokens it is quantized as one block and appended (with residual 0, every token is).
class SlotBuffer {
 public:
  SlotBuffer(BufferSpec spec, Storage st, int64_t batch, torch::ScalarType compute, torch::Device device);
  // x [B, heads, T, width] (any float dtype) appended after the last slot.
  void append(const torch::Tensor& x);
  // Every cached slot, [B, heads, tokens(), width] in the compute dtype (quantized blocks dequantized).
  torch::Tensor read() const;
  // read() for the attention kernels (kernels::attention, mla_decode_attention) on the CPU: a float cache stored
  // narrower than an f32 compute dtype (bf16, f16) as it lies, which they widen in registers to the same values
  // read() would copy out; anything else read(). See read_for_kernels(a, b) for the buffers a kernel reads together.
  torch::Tensor read_for_kernels() const;

  const BufferSpec& spec() const { return spec_; }
  const Storage& storage() const { return st_; }
  torch::ScalarType compute_dtype() const { return compute_; }
  int64_t tokens() const { return full_n_ + quantized_ + residual_n_; }  // slots held per row
  int64_t quantized_tokens() const { return quantized_; }
  int64_t residual_tokens() const { return residual_n_; }
  int64_t bytes() const;           // what holds the cached slots, for the whole batch
  int64_t capacity_bytes() const;  // what is allocated

  // For callers that write slots themselves (model/decode_step), float types only: reserve(t) makes room for t
  // more slots in full() (which may move), then advance(t) counts the t slots written after the last one.
  void reserve(int64_t t);
  void advance(int64_t t);

  // For fused kernels. Float types: full() [B, heads, capacity, width], the first tokens() slots valid.
  const torch::Tensor& full() const { return full_; }
  // Quantized types: blocks [0, quantized_tokens()) and the residual [B, heads, residual, width].
  QuantBlock quantized_view() const;
  torch::Tensor residual_view() const;  // [B, heads, residual_tokens(), width]; empty without a residual

 private:
  void quantize_and_append(const torch::Tensor& block);  // [B, heads, N, width]

  BufferSpec spec_;
  Storage st_;
  int64_t batch_;
  torch::ScalarType compute_;
  torch::Device device_;
  const kernels::CacheFormat& format_;
  torch::Tensor full_;                   // float types
  torch::Tensor data_, scale_, zero_;    // quantized types, grown by doubling along dim 2 (no zero_ for E4M3)
  torch::Tensor residual_;               // [B, heads, residual, width], compute dtype
  int64_t full_n_ = 0, quantized_ = 0, residual_n_ = 0;
};

// The two buffers one attention kernel reads (k and v; c and k_r), which it takes in one dtype: each
// read_for_kernels() where both are stored alike, else each read().
std::pair<torch::Tensor, torch::Tensor> read_for_kernels(const SlotBuffer& a, const SlotBuffer& b);

struct CacheStats {
  int64_t bytes = 0;            // holding the cached tokens, scales, zero points and residual included
  int64_t capacity_bytes = 0;   // allocated
  int64_t tokens = 0;           // cached tokens (batch rows × slots)
  int64_t residual_tokens = 0;  // of which in the full-precision residual
  double bytes_per_token() const { return tokens > 0 ? static_cast<double>(bytes) / tokens : 0.0; }
  // {cache_bytes, cache_bytes_per_token, cache_capacity_bytes, cache_tokens, cache_residual_tokens}
  nlohmann::json to_json() const;
};

// Sequences of different lengths share one slot axis: prompts are left-padded and padded slots are
// marked invalid, so every row appends at the same slot while keeping its own positions.
class KVCache {
 public:
  // layer_specs[i]: the buffers layer i's attention declares.
  KVCache(int64_t batch, const std::vector<std::vector<BufferSpec>>& layer_specs, const CacheOptions& opt,
          torch::ScalarType compute, torch::Device device);
  int64_t batch() const { return batch_; }
  int64_t filled() const { return filled_; }                  // slots in use
  const torch::Tensor& valid() const { return valid_; }       // [B, filled] bool, on the model's device
  bool all_valid() const { return all_valid_; }               // no padding slot so far (known on the host)
  const torch::Tensor& next_positions() const { return next_pos_host_; }  // [B] int64, host
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  SlotBuffer& buffer(int64_t layer, size_t i) { return layers_.at(layer).at(i); }
  const std::vector<SlotBuffer>& layer(int64_t i) const { return layers_.at(i); }
  CacheStats stats() const;
  int64_t bytes() const { return stats().bytes; }

  // Called by the model once per forward: records which new slots are real tokens (host tensor [B, T])
  // and returns their positions [B, T] on the device.
  torch::Tensor begin_step(const torch::Tensor& new_valid);
  void end_step(int64_t t) { filled_ += t; }
  // Appends t valid tokens of N(0, 1) values to every buffer, as if a prompt had been run: the benchmark's
  // long contexts without the prefill.
  void append_synthetic(int64_t t, uint64_t seed);

 private:
  int64_t batch_;
  torch::Device device_;
  int64_t filled_ = 0;
  bool all_valid_ = true;
  torch::Tensor valid_;          // device
  torch::Tensor next_pos_host_;  // [B] host: positions are counted where the valid flags arrive
  std::vector<std::vector<SlotBuffer>> layers_;
};

}  // namespace mha2mla::model
