#pragma once
// One decode step of one sequence through the whole layer stack in a single parallel region, with no libtorch
// op inside it. At batch 1 a step reads every weight once, and the module path spends about a fifth of it on
// what is not reading weights: some twenty libtorch ops per layer (views, allocations, dispatch) that run on
// one thread while the others wait, and a parallel region opened and joined per matrix. Here the threads stay
// in one region from the first layer to the final norm and meet at a barrier between dependent ops; every
// buffer is allocated before the region.
//
// It calls the same kernels as the module path (GEMV with the residual added on store, the fused per-token
// rows, split-KV decode attention) with the same splits, so its result is bit for bit the module path's
// (tests/model/test_decode_step.cpp). Where it does not apply (unsupported() says why), the modules run.
#include <torch/torch.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/kv_cache.h"

namespace mha2mla::model {

class TransformerImpl;

class DecodeStep {
 public:
  DecodeStep();
  ~DecodeStep();

  // Empty when the step can decode one token of m into `cache` under `ctx` (as hidden() built it); otherwise
  // the reason, e.g. "the cache is not stored in the compute dtype". Covered: CPU; batch 1; MHA/GQA layers with
  // or without biases (not qk-norm), and MLA layers that decode absorbed (joint or split latent); float caches
  // stored in the compute dtype; any sliding window and padding; variants whose kernels are not the libtorch
  // reference. Quantized caches, batches and CUDA run layer by layer.
  static std::string unsupported(const TransformerImpl& m, const KVCache& cache, const AttnContext& ctx);

  // Runs token `id` through every layer, appending its keys and values to the cache (the caller has called
  // cache.begin_step and calls end_step); returns the final-norm hidden state [1, 1, d] in the compute dtype.
  // ctx: cos/sin of the token's position, start, slot_valid, window and attn_seconds as hidden() sets them.
  torch::Tensor run(TransformerImpl& m, int64_t id, KVCache& cache, const AttnContext& ctx);

 private:
  struct Plans;                  // per layer: pointers, GEMV groups, row ops, attention arguments
  std::unique_ptr<Plans> plans_; // rebuilt at every step (weights may be reloaded, cache buffers move as they
                                 // grow) into vectors kept between steps, so a warm step allocates nothing
  torch::Tensor scratch_;                      // the activations of one layer, compute dtype (see run())
  std::vector<int64_t> cs_at_;                 // where each layer's cos/sin slab starts in scratch_, in values
  std::vector<float> partials_;                // attention's per-split partial softmaxes, then merge scratch
  std::unique_ptr<std::atomic<int64_t>[]> counters_;  // per layer: GEMV tails, attention items and groups
  size_t n_counters_ = 0;
};

}  // namespace mha2mla::model
