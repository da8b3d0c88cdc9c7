#pragma once
// Multiple-choice scoring by log-likelihood, as lm-evaluation-harness and lighteval do it: each choice is a
// continuation of the query; its log-likelihood is the sum of its tokens' log-probabilities given the query.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace mha2mla::eval {

struct McSample {
  std::string query;
  std::vector<std::string> choices;  // as the task formats them (usually with a leading space)
  int64_t gold = -1;
};

// Context and continuation token ids of one (query, choice) pair.
struct ContinuationRequest {
  std::vector<int64_t> context;       // never empty
  std::vector<int64_t> continuation;  // never empty
};

// lm-evaluation-harness's boundary rule: trailing whitespace of the context moves to the front of the
// continuation; context + continuation is encoded as one string, and the continuation is the ids past the
// encoded context (so a merge across the boundary stays in the continuation). Both encodings use the
// tokenizer's default special tokens. An empty context becomes [prefix_id] (the harness uses EOS). When a merge
// across the boundary leaves no continuation ids, the continuation is encoded on its own.
ContinuationRequest encode_pair(const tok::Tokenizer& tok, const std::string& context, const std::string& continuation,
                                int64_t prefix_id);

struct LoglikOptions {
  int64_t batch = 16;       // rows per forward
  int64_t max_length = 0;   // tokens per row; longer inputs keep their last max_length tokens (0 = model maximum)
};

// Sum of log p(continuation | context) per request. Requests are sorted by length, left-padded into batches
// and run through one forward per batch with a validity mask.
std::vector<double> loglikelihoods(model::TransformerImpl& m, const std::vector<ContinuationRequest>& reqs,
                                   const LoglikOptions& opt,
                                   const std::function<void(int64_t done, int64_t total)>& progress = {});

// Per-sample outcome under the three normalisations.
struct McResult {
  std::vector<double> loglik;
  int64_t pred = 0;            // argmax of loglik (first on ties)
  int64_t pred_norm = 0;       // argmax of loglik / characters
  int64_t pred_norm_nospace = 0;  // argmax of loglik / characters not counting a leading space
};
McResult score_choices(const McSample& s, const std::vector<double>& loglik);

// Characters (Unicode code points) of a choice, as Python's len() counts them.
int64_t char_length(const std::string& s);

// Mean and standard error of the mean (sample standard deviation / sqrt(n)), as the harnesses report them.
struct MeanStderr {
  double mean = 0.0, stderr_ = 0.0;
};
MeanStderr mean_stderr(const std::vector<double>& xs);

// K-shot prefix as lighteval builds it: K other samples, each "query + gold choice", joined by blank lines,
// followed by a blank line and the query. Shots are drawn without replacement from the other samples with a
// generator seeded by (seed, index), so a run is reproducible.
std::string fewshot_query(const std::vector<McSample>& all, size_t index, int64_t k, uint64_t seed = 1234);

}  // namespace mha2mla::eval
