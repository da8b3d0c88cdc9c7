#include "eval/multiple_choice.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "eval/string_similarity.h"
#include "util/error.h"

namespace mha2mla::eval {

namespace {

std::vector<int64_t> encode(const tok::Tokenizer& tok, const std::string& s) {
  auto ids = tok.encode(s, true);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

bool is_trailing_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

template <typename T>
int64_t argmax(const std::vector<T>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();  // first maximum, as numpy's argmax
}

}  // namespace

ContinuationRequest encode_pair(const tok::Tokenizer& tok, const std::string& context, const std::string& continuation,
                                int64_t prefix_id) {
  std::string ctx = context, cont = continuation;
  size_t keep = ctx.size();
  while (keep > 0 && is_trailing_space(ctx[keep - 1])) --keep;
  cont = ctx.substr(keep) + cont;
  ctx.resize(keep);
  ContinuationRequest r;
  auto whole = encode(tok, ctx + cont);
  r.context = encode(tok, ctx);
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(std::min(r.context.size(), whole.size())), whole.end());
  if (r.continuation.empty()) {
    // A merge swallowed the whole continuation into the context's last token (the harness would score nothing):
    // score the continuation's own encoding after the context instead.
    auto ids = tok.encode(cont, false);
    r.continuation.assign(ids.begin(), ids.end());
  }
  check(!r.continuation.empty(), "continuation \"" + continuation + "\" encodes to no tokens");
  if (r.context.empty()) r.context = {prefix_id};
  return r;
}

std::vector<double> loglikelihoods(model::TransformerImpl& m, const std::vector<ContinuationRequest>& reqs,
                                   const LoglikOptions& opt, const std::function<void(int64_t, int64_t)>& progress) {
  torch::NoGradGuard ng;
  const int64_t max_len = opt.max_length > 0 ? opt.max_length : m.config().max_position_embeddings;
  check(max_len <= m.config().max_position_embeddings,
        "--max-length " + std::to_string(max_len) + " exceeds max_position_embeddings (" +
            std::to_string(m.config().max_position_embeddings) + ")");
  check(opt.batch >= 1, "--batch must be at least 1");
  const int64_t n = static_cast<int64_t>(reqs.size());
  // Each row: the last max_len tokens of context + continuation without its final token (the harness's
  // (ctx + cont)[-(max_len + 1):][:-1]); the continuation's tokens are predicted by the row's last positions.
  std::vector<std::vector<int64_t>> rows(n);
  std::vector<int64_t> cont_len(n);
  for (int64_t i = 0; i < n; ++i) {
    const auto& r = reqs[i];
    check(!r.context.empty() && !r.continuation.empty(), "empty context or continuation");
    check(static_cast<int64_t>(r.continuation.size()) <= max_len,
          "a continuation of " + std::to_string(r.continuation.size()) + " tokens exceeds --max-length " +
              std::to_string(max_len));
    std::vector<int64_t> all(r.context);
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    all.pop_back();
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(all.size()) - max_len);
    rows[i].assign(all.begin() + start, all.end());
    cont_len[i] = static_cast<int64_t>(r.continuation.size());
  }
  // Longest first, so each batch pads little and a too-large batch fails at once.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows[a].size() > rows[b].size(); });
  std::vector<double> out(n, 0.0);
  const auto dev = m.device();
  for (int64_t b0 = 0; b0 < n; b0 += opt.batch) {
    const int64_t bs = std::min(opt.batch, n - b0);
    int64_t T = 0, L = 0;
    for (int64_t k = 0; k < bs; ++k) {
      T = std::max<int64_t>(T, static_cast<int64_t>(rows[order[b0 + k]].size()));
      L = std::max(L, cont_len[order[b0 + k]]);
    }
    auto ids = torch::zeros({bs, T}, torch::kInt64);
    auto valid = torch::zeros({bs, T}, torch::kBool);
    auto targets = torch::zeros({bs, L}, torch::kInt64);
    auto tmask = torch::zeros({bs, L}, torch::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto va = valid.accessor<bool, 2>();
    auto ta = targets.accessor<int64_t, 2>();
    auto ma = tmask.accessor<bool, 2>();
    for (int64_t k = 0; k < bs; ++k) {
      const int64_t i = order[b0 + k];
      const auto& row = rows[i];
      const int64_t len = static_cast<int64_t>(row.size()), pad = T - len;
      for (int64_t t = 0; t < len; ++t) ia[k][pad + t] = row[t], va[k][pad + t] = true;
      const auto& cont = reqs[i].continuation;
      for (int64_t t = 0; t < cont_len[i]; ++t) ta[k][L - cont_len[i] + t] = cont[t], ma[k][L - cont_len[i] + t] = true;
    }
    model::check_token_ids(ids, m.config().vocab_size);
    const bool all_valid = valid.all().item<bool>();
    auto h = m.hidden(ids.to(dev), nullptr, all_valid ? torch::Tensor() : valid.to(dev));  // [bs, T, d]
    auto logp = torch::log_softmax(m.logits(h.narrow(1, T - L, L)).to(torch::kFloat32), -1);  // [bs, L, V]
    auto tok_lp = logp.gather(-1, targets.to(dev).unsqueeze(-1)).squeeze(-1).to(torch::kCPU).to(torch::kFloat64);
    auto sums = (tok_lp * tmask.to(torch::kFloat64)).sum(1);  // [bs]
    auto sa = sums.accessor<double, 1>();
    for (int64_t k = 0; k < bs; ++k) out[order[b0 + k]] = sa[k];
    if (progress) progress(b0 + bs, n);
  }
  return out;
}

int64_t char_length(const std::string& s) { return static_cast<int64_t>(code_points(s).size()); }

McResult score_choices(const McSample& s, const std::vector<double>& loglik) {
  check(loglik.size() == s.choices.size() && !loglik.empty(), "one log-likelihood per choice expected");
  McResult r;
  r.loglik = loglik;
  std::vector<double> norm(loglik.size()), nospace(loglik.size());
  for (size_t i = 0; i < loglik.size(); ++i) {
    const int64_t len = char_length(s.choices[i]);
    const int64_t len_ns = !s.choices[i].empty() && s.choices[i][0] == ' ' ? len - 1 : len;
    norm[i] = loglik[i] / static_cast<double>(std::max<int64_t>(len, 1));
    nospace[i] = loglik[i] / static_cast<double>(std::max<int64_t>(len_ns, 1));
  }
  r.pred = argmax(loglik);
  r.pred_norm = argmax(norm);
  r.pred_norm_nospace = argmax(nospace);
  return r;
}

MeanStderr mean_stderr(const std::vector<double>& xs) {
  MeanStderr r;
  const double n = static_cast<double>(xs.size());
  if (xs.empty()) return r;
  r.mean = std::accumulate(xs.begin(), xs.end(), 0.0) / n;
  if (xs.size() < 2) return r;
  double ss = 0.0;
  for (double x : xs) ss += (x - r.mean) * (x - r.mean);
  r.stderr_ = std::sqrt(ss / (n - 1)) / std::sqrt(n);
  return r;
}

std::string fewshot_query(const std::vector<McSample>& all, size_t index, int64_t k, uint64_t seed) {
  if (k <= 0) return all[index].query;
  check(static_cast<size_t>(k) < all.size(), "--fewshot " + std::to_string(k) + " needs more than " +
                                                 std::to_string(k) + " samples in the data");
  std::vector<size_t> others;
  for (size_t i = 0; i < all.size(); ++i)
    if (i != index) others.push_back(i);
  std::mt19937_64 rng(seed * 1000003ULL + index);
  std::string out;
  for (int64_t s = 0; s < k; ++s) {
    std::uniform_int_distribution<size_t> pick(static_cast<size_t>(s), others.size() - 1);
    std::swap(others[s], others[pick(rng)]);
    const auto& shot = all[others[s]];
    out += shot.query + shot.choices.at(static_cast<size_t>(shot.gold)) + "\n\n";
  }
  return out + all[index].query;
}

}  // namespace mha2mla::eval
