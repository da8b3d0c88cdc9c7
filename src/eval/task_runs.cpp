#include "eval/task_runs.h"

#include <algorithm>
#include <map>

#include "infer/generate.h"
#include "util/error.h"

namespace mha2mla::eval {

namespace {

bool kept(const Keep& keep, size_t i) { return !keep || keep(i); }

// Runs fn, prefixing an error with where(i).
template <typename F>
auto named(const Where& where, size_t i, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    if (!where) throw;
    fail(where(i) + ": " + e.what());
  }
}

}  // namespace

std::vector<std::vector<double>> mc_logliks(model::TransformerImpl& m, const tok::Tokenizer& tok,
                                            const std::vector<McSample>& samples, int64_t fewshot,
                                            const LoglikOptions& opt, const Keep& keep, const Where& where,
                                            const ProgressFn& progress) {
  const auto& eos = m.config().eos_token_ids;
  const auto& bos = m.config().bos_token_ids;
  check(!eos.empty() || !bos.empty(), "the model's config.json sets neither eos_token_id nor bos_token_id");
  const int64_t prefix = eos.empty() ? bos[0] : eos[0];  // stands in for an empty context, as in the harness
  std::vector<ContinuationRequest> reqs;
  std::vector<size_t> first(samples.size(), 0);
  for (size_t i = 0; i < samples.size(); ++i) {
    first[i] = reqs.size();
    if (!kept(keep, i)) continue;
    const std::string q = fewshot_query(samples, i, fewshot);
    for (const auto& c : samples[i].choices) reqs.push_back(named(where, i, [&] { return encode_pair(tok, q, c, prefix); }));
  }
  auto ll = loglikelihoods(m, reqs, opt, progress);
  std::vector<std::vector<double>> out(samples.size());
  for (size_t i = 0; i < samples.size(); ++i)
    if (kept(keep, i))
      out[i].assign(ll.begin() + static_cast<std::ptrdiff_t>(first[i]),
                    ll.begin() + static_cast<std::ptrdiff_t>(first[i] + samples[i].choices.size()));
  return out;
}

McMetrics mc_metrics(const std::vector<McSample>& samples, const std::vector<std::vector<double>>& logliks) {
  check(samples.size() == logliks.size(), "mc_metrics: one log-likelihood vector per sample is needed");
  McMetrics r;
  std::vector<double> acc, acc_norm, acc_ns;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    r.results.push_back(score_choices(s, logliks[i]));
    const auto& x = r.results.back();
    acc.push_back(x.pred == s.gold);
    acc_norm.push_back(x.pred_norm == s.gold);
    acc_ns.push_back(x.pred_norm_nospace == s.gold);
  }
  r.acc = mean_stderr(acc);
  r.acc_norm = mean_stderr(acc_norm);
  r.acc_norm_nospace = mean_stderr(acc_ns);
  return r;
}

std::vector<std::string> longbench_predictions(model::TransformerImpl& m, const tok::Tokenizer& tok,
                                               const std::vector<LongBenchRow>& rows, int64_t batch,
                                               int64_t max_length, const Keep& keep, const Where& where,
                                               const ProgressFn& progress, int64_t* truncated) {
  check(batch >= 1, "generation batch must be at least 1");
  const int64_t max_pos = m.config().max_position_embeddings;
  std::vector<std::string> preds(rows.size());
  // Rows of one dataset share a generation length: batch them together, in file order.
  std::map<std::string, std::vector<size_t>> by_dataset;
  for (size_t i = 0; i < rows.size(); ++i)
    if (kept(keep, i)) by_dataset[rows[i].dataset].push_back(i);
  int64_t total = 0, done = 0, cut = 0;
  for (const auto& [name, idx] : by_dataset) total += static_cast<int64_t>(idx.size());
  for (const auto& [name, idx] : by_dataset) {
    const auto& d = longbench_dataset(name);
    check(d.max_new < max_pos, name + ": generating " + std::to_string(d.max_new) +
                                   " tokens leaves no room for a prompt within max_position_embeddings");
    // The prompt and the generated tokens must fit the model's positions together.
    const int64_t limit = std::min(max_length > 0 ? max_length : max_pos, max_pos - d.max_new);
    infer::GenerateOptions go;
    go.max_new = d.max_new;
    go.stop_ids = m.config().eos_token_ids;
    for (size_t b0 = 0; b0 < idx.size(); b0 += static_cast<size_t>(batch)) {
      const size_t b1 = std::min(idx.size(), b0 + static_cast<size_t>(batch));
      std::vector<std::vector<int64_t>> prompts;
      for (size_t k = b0; k < b1; ++k) {
        auto p32 = named(where, idx[k], [&] { return tok.encode(longbench_prompt(d, rows[idx[k]]), true); });
        std::vector<int64_t> ids(p32.begin(), p32.end());
        if (static_cast<int64_t>(ids.size()) > limit) ++cut;
        prompts.push_back(truncate_middle(ids, limit));
      }
      auto out = infer::generate(m, prompts, go);
      for (size_t k = b0; k < b1; ++k) {
        std::vector<int32_t> gen;
        for (int64_t id : out[k - b0]) {
          if (std::find(go.stop_ids.begin(), go.stop_ids.end(), id) != go.stop_ids.end()) break;
          gen.push_back(static_cast<int32_t>(id));
        }
        preds[idx[k]] = tok.decode(gen, /*skip_special_tokens=*/true);
      }
      done += static_cast<int64_t>(b1 - b0);
      if (progress) progress(done, total);
    }
  }
  if (truncated) *truncated = cut;
  return preds;
}

LongBenchScores score_longbench(const std::vector<LongBenchRow>& rows, const std::vector<std::string>& preds,
                                const Where& where) {
  check(rows.size() == preds.size(), "score_longbench: one prediction per row is needed");
  LongBenchScores r;
  std::vector<double> pct;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& d = longbench_dataset(rows[i].dataset);
    const double s = named(where, i, [&] { return longbench_sample_score(d, preds[i], rows[i]); });
    r.summary.add(rows[i], s);
    r.scores.push_back(s);
    pct.push_back(100.0 * s);
  }
  r.score = mean_stderr(pct);
  return r;
}

}  // namespace mha2mla::eval
