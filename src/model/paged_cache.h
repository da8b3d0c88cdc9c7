#pragma once
// The paged decoding cache of the server: every layer's per-token buffers (GQA k, v; MLA c, k_r) live in
// fixed-size blocks of one pool, allocated once, and each sequence holds a block table. A finished sequence's
// blocks go back to the pool for the next one. Storage is what the cache-format table says for each buffer, as in
// KVCache: floats as stored; quantized types as codes, with the newest tokens (up to --cache-residual) in a
// per-sequence residual in the compute dtype until they fill a whole quantization block, as SlotBuffer does.
//
// A prompt is prefilled into a contiguous one-row KVCache (the prefill kernels read contiguous keys), which
// PagedSequence::load then moves into the sequence's blocks; decoding appends to the blocks directly and attends
// through kernels/paged_attention.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/paged_attention.h"
#include "model/kv_cache.h"

namespace mha2mla::model {

class BlockPool {
 public:
  // layer_specs[i]: the buffers layer i's attention declares. Fails with a clear message where a storage cannot
  // be paged (a per-channel group that does not divide the block).
  BlockPool(const std::vector<std::vector<BufferSpec>>& layer_specs, const CacheOptions& opt, torch::ScalarType compute,
            torch::Device device, int64_t blocks, int64_t block_tokens);
  int64_t blocks() const { return blocks_; }
  int64_t block_tokens() const { return block_tokens_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t bytes() const { return bytes_; }  // allocated for the blocks
  int64_t block_bytes() const { return bytes_ / blocks_; }
  // n free blocks, most recently freed first (their pages are already resident); fails when fewer are free.
  std::vector<int32_t> take(int64_t n);
  void give_back(std::vector<int32_t>& ids);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  const kernels::PagedBuffer& buffer(int64_t layer, size_t i) const { return layers_.at(layer).at(i).pool; }
  const Storage& storage(int64_t layer, size_t i) const { return layers_.at(layer).at(i).st; }
  const BufferSpec& spec(int64_t layer, size_t i) const { return layers_.at(layer).at(i).spec; }
  size_t buffers(int64_t layer) const { return layers_.at(layer).size(); }
  torch::ScalarType compute_dtype() const { return compute_; }
  torch::Device device() const { return device_; }

 private:
  struct Buffer {
    BufferSpec spec;
    Storage st;
    kernels::PagedBuffer pool;  // [blocks, heads, block_tokens, .]
  };
  int64_t blocks_, block_tokens_;
  int64_t bytes_ = 0;  // of every pool tensor, counted once at construction (read at every step)
  torch::ScalarType compute_;
  torch::Device device_;
  std::vector<std::vector<Buffer>> layers_;
  std::vector<int32_t> free_;  // a stack
};

// One sequence's cache in a pool: its blocks (taken at construction, given back at destruction) and, per layer
// and buffer, the residual of a quantized buffer.
class PagedSequence {
 public:
  PagedSequence(BlockPool& pool, int64_t blocks);
  ~PagedSequence();
  PagedSequence(const PagedSequence&) = delete;
  PagedSequence& operator=(const PagedSequence&) = delete;

  int64_t tokens() const { return tokens_; }
  int64_t capacity() const { return static_cast<int64_t>(blocks_.size()) * pool_.block_tokens(); }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Moves the slots of a one-row cache with no padding (a prefilled prompt) into the blocks; the sequence must
  // be empty. The cache can be dropped afterwards.
  void load(const KVCache& c);
  // The new token of layer `layer`'s buffer i, x [1, heads, 1, width], at slot tokens() (counted by end_step).
  void append(int64_t layer, size_t i, const torch::Tensor& x);
  void end_step() { ++tokens_; }
  // What the attention kernels read of layer `layer` (its two buffers), the step's new token included.
  kernels::PagedSeq view(int64_t layer) const;
  int64_t residual_bytes() const;  // held outside the pool
  int64_t bytes() const;           // what holds its tokens: its share of blocks and its residuals

 private:
  struct Residual {
    torch::Tensor values;  // [1, heads, residual, width] compute dtype; undefined for float buffers
    int64_t n = 0;         // tokens in it
    int64_t quantized = 0; // tokens held as codes in the blocks
  };
  // Writes rows [at, at + n) of a [1, heads, n, X] tensor into pool tensor t (rows_per_block rows per block).
  void write_rows(const torch::Tensor& t, const torch::Tensor& src, int64_t at, int64_t rows_per_block) const;
  void store_codes(int64_t layer, size_t i, const torch::Tensor& x);  // x [1, heads, n, width] quantized at .quantized

  BlockPool& pool_;
  std::vector<int32_t> blocks_;
  int64_t tokens_ = 0;
  std::vector<std::vector<Residual>> res_;  // [layer][buffer]
};

// The sequences of one batched decode step, for the attention modules (AttnContext::paged).
struct PagedBatch {
  const BlockPool* pool = nullptr;
  std::vector<PagedSequence*> seqs;
  // Appends row b of x [B, heads, 1, width] to sequence b's buffer i of `layer`.
  void append(int64_t layer, size_t i, const torch::Tensor& x) const;
  // q [B, Hq, 1, D] over layer's k and v -> [B, Hq, 1, Dv].
  torch::Tensor attend(int64_t layer, const torch::Tensor& q, int64_t window, double scale) const;
  // Absorbed MLA: q_lat [B, Hq, 1, L], q_rope [B, Hq, 1, r] over layer's c and k_r -> [B, Hq, 1, L].
  torch::Tensor attend_mla(int64_t layer, const torch::Tensor& q_lat, const torch::Tensor& q_rope, int64_t window,
                           double scale) const;

 private:
  std::vector<kernels::PagedSeq> views(int64_t layer) const;
};

}  // namespace mha2mla::model
