#pragma once
// Batched autoregressive generation over the model's cache: prompts are left-padded, and every
// row decodes in lock-step until it hits EOS or max_new.
#include <functional>
#include <vector>

#include "infer/sampling.h"
#include "model/transformer.h"

namespace mha2mla::infer {

struct GenerateOptions {
  int64_t max_new = 64;
  SamplingParams sampling;
  std::vector<int64_t> stop_ids;  // usually the config's EOS ids
};

// Why a row stopped: a stop id (EOS), max_new tokens, or no position left (max_position_embeddings).
enum class StopReason { Eos, MaxNew, Context };
const char* stop_reason_name(StopReason r);  // "eos", "max_new", "context_limit"

// on_token(row, token) is called as soon as a row produces a token (for streaming). The cache is stored as
// m.runtime().cache says; `stats`, if given, receives its size at the end of the run, and `stops` each row's
// reason for stopping.
std::vector<std::vector<int64_t>> generate(model::TransformerImpl& m, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt,
                                           const std::function<void(int64_t, int64_t)>& on_token = {},
                                           model::CacheStats* stats = nullptr, std::vector<StopReason>* stops = nullptr);

}  // namespace mha2mla::infer
