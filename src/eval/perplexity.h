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

struct PplResult {
  double nll = 0.0;  // mean negative log-likelihood per predicted token (nats)
  double ppl = 0.0;
  int64_t tokens = 0;  // tokens predicted
  int64_t windows = 0;
  double seconds = 0.0;
};

PplResult perplexity(model::TransformerImpl& m, const std::vector<int64_t>& ids, int64_t ctx, int64_t stride,
                     const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace mha2mla::eval
