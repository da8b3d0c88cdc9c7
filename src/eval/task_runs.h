#pragma once
// Running a model over a task's samples: the part of `eval` that other commands (reproduce) share. Each
// function takes `keep(i)`, whether this process handles sample i (every sample when it is empty), so
// `eval --nproc` can split the samples and gather exact totals itself.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/longbench.h"
#include "eval/multiple_choice.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace mha2mla::eval {

using Keep = std::function<bool(size_t i)>;
using ProgressFn = std::function<void(int64_t done, int64_t total)>;
// Names sample i in errors ("FILE:LINE"); an empty function names it by index.
using Where = std::function<std::string(size_t i)>;

// Log-likelihood of every choice of every kept sample (empty vectors for the others), all requests of all
// kept samples in length-sorted, left-padded batches (eval::loglikelihoods). `fewshot` as fewshot_query.
std::vector<std::vector<double>> mc_logliks(model::TransformerImpl& m, const tok::Tokenizer& tok,
                                            const std::vector<McSample>& samples, int64_t fewshot,
                                            const LoglikOptions& opt, const Keep& keep = {}, const Where& where = {},
                                            const ProgressFn& progress = {});

// The three accuracies (mean and standard error over samples) from every sample's log-likelihoods.
struct McMetrics {
  MeanStderr acc, acc_norm, acc_norm_nospace;
  std::vector<McResult> results;  // per sample
};
McMetrics mc_metrics(const std::vector<McSample>& samples, const std::vector<std::vector<double>>& logliks);

// Greedy predictions for the kept LongBench rows ("" for the others): each dataset's prompt and generation
// length, prompts cut in the middle to fit min(max_length or the model's positions, positions − generation
// length), `batch` rows of one dataset per generate call, the text up to the first EOS. `truncated` (when
// given) counts the kept prompts that were cut.
std::vector<std::string> longbench_predictions(model::TransformerImpl& m, const tok::Tokenizer& tok,
                                               const std::vector<LongBenchRow>& rows, int64_t batch,
                                               int64_t max_length, const Keep& keep = {}, const Where& where = {},
                                               const ProgressFn& progress = {}, int64_t* truncated = nullptr);

// LongBench scores of predictions: the summary, and the per-sample scores in [0, 1].
struct LongBenchScores {
  LongBenchSummary summary;
  std::vector<double> scores;
  MeanStderr score;  // over samples, ×100
};
LongBenchScores score_longbench(const std::vector<LongBenchRow>& rows, const std::vector<std::string>& preds,
                                const Where& where = {});

}  // namespace mha2mla::eval
