#pragma once
// The decoding cache. Batch bookkeeping (slot validity, next positions) is shared by all layers;
// each layer owns a LayerCache whose layout its attention module chooses (full K/V, an MLA latent, ...).
#include <torch/torch.h>

#include <memory>
#include <vector>

namespace mha2mla::model {

// Returns `buf` with room for at least `need` slots on dim 2 (shaped like `like` otherwise), copying
// the first `keep` slots when it has to grow; capacity doubles, so appends are amortised O(1).
torch::Tensor grow_slots(const torch::Tensor& buf, const torch::Tensor& like, int64_t need, int64_t keep);

class LayerCache {
 public:
  virtual ~LayerCache() = default;
  // Bytes held for `slots` cached positions of the whole batch.
  virtual int64_t bytes_for(int64_t slots) const = 0;
};

// Full keys and values, [B, n_kv, capacity, d], grown by doubling.
class KVLayerCache : public LayerCache {
 public:
  // Writes k/v [B, n_kv, T, d] at slots [start, start+T) and returns views of slots [0, start+T).
  std::pair<torch::Tensor, torch::Tensor> append(const torch::Tensor& k, const torch::Tensor& v, int64_t start);
  int64_t bytes_for(int64_t slots) const override;

 private:
  torch::Tensor k_, v_;
};

// Sequences of different lengths share one slot axis: prompts are left-padded and padded slots are
// marked invalid, so every row appends at the same slot while keeping its own positions.
class KVCache {
 public:
  KVCache(int64_t batch, int64_t num_layers);
  int64_t batch() const { return batch_; }
  int64_t filled() const { return filled_; }  // slots in use
  const torch::Tensor& valid() const { return valid_; }        // [B, filled] bool
  const torch::Tensor& next_positions() const { return next_pos_; }  // [B] int64
  LayerCache* layer(int64_t i) { return layers_.at(i).get(); }
  void set_layer(int64_t i, std::unique_ptr<LayerCache> c) { layers_.at(i) = std::move(c); }
  bool has_layer(int64_t i) const { return layers_.at(i) != nullptr; }
  int64_t bytes() const;  // all layers, at the current fill

  // Called by the model once per forward: records which new slots are real tokens and
  // returns their positions [B, T].
  torch::Tensor begin_step(const torch::Tensor& new_valid);
  void end_step(int64_t t) { filled_ += t; }

 private:
  int64_t batch_;
  int64_t filled_ = 0;
  torch::Tensor valid_;
  torch::Tensor next_pos_;
  std::vector<std::unique_ptr<LayerCache>> layers_;
};

}  // namespace mha2mla::model
