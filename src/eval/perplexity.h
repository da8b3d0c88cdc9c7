#pragma once
// Sliding-window perplexity. Windows of at most `ctx` tokens end `stride` tokens apart (at most ctx - 1, so
// each scored token has context in its window); each window scores only the tokens after the previous
// window's end. Every token after the first is predicted exactly once. With stride < ctx this equals
// HF's recipe; at stride == ctx HF drops each window's first token, which this does not.
#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"

namespace mha2mla::eval {

struct PplOptions {
  int64_t ctx = 2048;
  int64_t stride = 1024;
  // > 0: each window goes through a fresh cache (stored as m.runtime().cache says) `chunk` tokens at a time,
  // so every token attends to its cached, possibly quantized, context exactly as in generation.
  int64_t chunk = 0;
};

struct PplResult {
  double nll = 0.0;  // mean negative log-likelihood per predicted token (nats)
  double ppl = 0.0;
  int64_t tokens = 0;  // tokens predicted
  int64_t windows = 0;
  double seconds = 0.0;
  model::CacheStats cache;  // with chunk > 0: the last window's cache
};

PplResult perplexity(model::TransformerImpl& m, const std::vector<int64_t>& ids, const PplOptions& opt,
                     const std::function<void(int64_t done, int64_t total)>& progress = {});
inline PplResult perplexity(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t ctx, int64_t stride,
                            const std::function<void(int64_t done, int64_t total)>& progress = {}) {
  return perplexity(m, ids, PplOptions{ctx, stride, 0}, progress);
}

}  // namespace mha2mla::eval
