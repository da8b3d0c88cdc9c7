#include "eval/perplexity.h"

#include <chrono>
#include <cmath>

#include "util/error.h"

namespace mha2mla::eval {

namespace {

// Hidden states [1, len, d] of a window fed through a fresh cache `chunk` tokens at a time.
torch::Tensor hidden_through_cache(model::TransformerImpl& m, const torch::Tensor& window, int64_t chunk,
                                   model::CacheStats& stats) {
  auto cache = m.make_cache(1);
  const int64_t len = window.size(1);
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < len; s += chunk) parts.push_back(m.hidden(window.narrow(1, s, std::min(chunk, len - s)), cache.get()));
  stats = cache->stats();
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
}

}  // namespace

PplResult perplexity(model::TransformerImpl& m, const std::vector<int64_t>& ids, const PplOptions& opt,
                     const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t ctx = opt.ctx, stride = opt.stride;
  PplResult r;
  torch::NoGradGuard ng;
  const int64_t n = static_cast<int64_t>(ids.size());
  check(n >= 2, "the text has " + std::to_string(n) + " token(s): perplexity needs at least 2");
  check(ctx >= 2, "--ctx must be at least 2");
  check(stride >= 1 && stride <= ctx, "--stride must be between 1 and --ctx");
  check(opt.chunk >= 0, "--chunk must not be negative");
  check(ctx <= m.config().max_position_embeddings,
        "--ctx " + std::to_string(ctx) + " exceeds max_position_embeddings (" +
            std::to_string(m.config().max_position_embeddings) + ")");
  auto t0 = std::chrono::steady_clock::now();
  auto all = torch::tensor(ids, torch::kInt64);
  double total_nll = 0.0;
  int64_t scored = 0, windows = 0, prev_end = 0;
  // Window k ends at e_k and starts at max(0, e_k - ctx); it scores tokens [e_{k-1}, e_k). Advancing by at most
  // ctx - 1 keeps at least one token of context before the first scored token, so none is skipped.
  const int64_t step = std::min(stride, ctx - 1);
  int64_t end = std::min(ctx, n);
  while (true) {
    const int64_t begin = std::max<int64_t>(0, end - ctx);
    const int64_t first_target = std::max<int64_t>(prev_end, 1);
    const int64_t len = end - begin;
    const int64_t k = end - first_target;
    auto window = all.narrow(0, begin, len).unsqueeze(0);
    auto h = opt.chunk > 0 ? hidden_through_cache(m, window, opt.chunk, r.cache) : m.hidden(window);  // [1, len, d]
    auto hs = h.narrow(1, first_target - 1 - begin, k);
    auto logits = m.logits(hs).view({k, -1});
    auto targets = all.narrow(0, first_target, k).to(logits.device());
    auto nll = torch::nn::functional::cross_entropy(
        logits, targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    total_nll += nll.item<double>();
    scored += k;
    ++windows;
    prev_end = end;
    if (progress) progress(end, n);
    if (end == n) break;
    end = std::min(end + step, n);
  }
  r.tokens = scored;
  r.windows = windows;
  r.nll = total_nll / static_cast<double>(scored);
  r.ppl = std::exp(r.nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace mha2mla::eval
