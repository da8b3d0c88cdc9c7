#include "infer/generate.h"

#include <algorithm>

#include "util/error.h"

namespace mha2mla::infer {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eos: return "eos";
    case StopReason::MaxNew: return "max_new";
    case StopReason::Context: return "context_limit";
  }
  return "?";
}

std::vector<std::vector<int64_t>> generate(model::TransformerImpl& m, const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& opt,
                                           const std::function<void(int64_t, int64_t)>& on_token,
                                           model::CacheStats* stats, std::vector<StopReason>* stops) {
  torch::NoGradGuard ng;
  const int64_t B = static_cast<int64_t>(prompts.size());
  check(B > 0, "no prompts to generate from");
  size_t longest = 0;
  for (const auto& p : prompts) {
    check(!p.empty(), "empty prompt: it needs at least one token");
    longest = std::max(longest, p.size());
  }
  const int64_t max_pos = m.config().max_position_embeddings;
  check(static_cast<int64_t>(longest) <= max_pos,
        "prompt has " + std::to_string(longest) + " tokens, more than max_position_embeddings (" +
            std::to_string(max_pos) + ")");
  const int64_t T = static_cast<int64_t>(longest);
  auto ids = torch::zeros({B, T}, torch::kInt64);
  auto valid = torch::zeros({B, T}, torch::kBool);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t pad = T - static_cast<int64_t>(p.size());
    for (size_t i = 0; i < p.size(); ++i) ids[b][pad + static_cast<int64_t>(i)] = p[i];
    valid[b].narrow(0, pad, static_cast<int64_t>(p.size())).fill_(true);
  }
  std::vector<Sampler> samplers;
  for (int64_t b = 0; b < B; ++b) {
    SamplingParams sp = opt.sampling;
    sp.seed = opt.sampling.seed + static_cast<uint64_t>(b);
    samplers.emplace_back(sp);
  }
  model::check_token_ids(ids, m.config().vocab_size);
  auto cache = m.make_cache(B);
  std::vector<std::vector<int64_t>> out(B);
  std::vector<bool> done(B, false);
  std::vector<StopReason> why(B, StopReason::MaxNew);  // rows still running at the end ran out of max_new
  auto h = m.hidden(ids, cache.get(), valid);
  auto last = m.logits(h.select(1, T - 1));  // [B, V]
  for (int64_t step = 0; step < opt.max_new; ++step) {
    auto next = torch::zeros({B, 1}, torch::kInt64);
    auto next_valid = torch::zeros({B, 1}, torch::kBool);
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      if (done[b]) continue;
      int64_t tok = samplers[b].sample(last[b]);
      out[b].push_back(tok);
      if (on_token) on_token(b, tok);
      if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), tok) != opt.stop_ids.end()) {
        done[b] = true;
        why[b] = StopReason::Eos;
        continue;
      }
      int64_t pos = cache->next_positions()[b].item<int64_t>();
      if (pos >= max_pos) {  // the next token would have no position left
        done[b] = true;
        why[b] = StopReason::Context;
        continue;
      }
      next[b][0] = tok;
      next_valid[b][0] = true;
      any = true;
    }
    if (!any || step + 1 == opt.max_new) break;
    last = m.logits(m.hidden(next.to(m.device()), cache.get(), next_valid).select(1, 0));
  }
  if (stats) *stats = cache->stats();
  if (stops) *stops = why;
  return out;
}

}  // namespace mha2mla::infer
