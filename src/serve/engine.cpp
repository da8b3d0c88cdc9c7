#include "serve/engine.h"

#include <algorithm>

#include "model/kv_cache.h"

namespace mha2mla::serve {

using Clock = std::chrono::steady_clock;

bool Request::next(TokenEvent* e) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !events_.empty() || finish_ != Finish::None; });
  if (events_.empty()) return false;
  *e = std::move(events_.front());
  events_.pop_front();
  return true;
}

Finish Request::finish_reason() {
  std::lock_guard<std::mutex> l(mu_);
  return finish_;
}

std::string Request::error() {
  std::lock_guard<std::mutex> l(mu_);
  return error_;
}

void Request::push(TokenEvent e) {
  {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Request::end(Finish f, std::string error) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (finish_ != Finish::None) return;
    finish_ = f;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

struct Engine::Seq {
  std::shared_ptr<Request> req;
  std::unique_ptr<model::KVCache> cache;         // the prompt's, while it is prefilled
  std::unique_ptr<model::PagedSequence> paged;   // its blocks, from admission to its end
  infer::Sampler sampler;
  int64_t fed = 0;        // tokens in the cache
  int64_t generated = 0;  // tokens sampled
  int64_t pending = -1;   // the last sampled token, fed at the next step
  int64_t blocks = 0;        // reserved in the pool; 0 once released
  Clock::time_point last_token;
  Seq(std::shared_ptr<Request> r, const infer::SamplingParams& sp) : req(std::move(r)), sampler(sp) {}
};

double Engine::bytes_per_token(const model::TransformerImpl& m) {
  double total = 0;
  for (const auto& specs : m.cache_specs()) total += model::bytes_per_token(specs, m.runtime().cache, m.dtype());
  return total;
}

std::string Engine::unsupported(model::TransformerImpl& m, const EngineOptions& o) {
  try {
    torch::NoGradGuard ng;
    auto pool = m.make_block_pool(1, o.block_tokens);
    model::PagedSequence seq(*pool, 1);
    model::PagedBatch batch{pool.get(), {&seq}};
    m.decode_paged({0}, batch);  // one step of token 0 over an empty sequence: every layer's paged path
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

Engine::Engine(model::TransformerImpl& m, EngineOptions o, Metrics& metrics) : m_(m), opt_(o), metrics_(metrics) {
  pool_ = m.make_block_pool(opt_.blocks, opt_.block_tokens);
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Engine::Admit Engine::submit(std::shared_ptr<Request> r) {
  const int64_t need = blocks_for(*r);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (draining_ || stop_) return Admit::Draining;
    if (need > opt_.blocks) return Admit::NeverFits;
    if (static_cast<int64_t>(queue_.size()) >= opt_.max_queue) return Admit::QueueFull;
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
  return Admit::Queued;
}

EngineSnapshot Engine::snapshot() const {
  std::lock_guard<std::mutex> l(mu_);
  EngineSnapshot s;
  s.queued = static_cast<int64_t>(queue_.size());
  s.running = std::count_if(running_.begin(), running_.end(), [](const auto& q) { return q->blocks > 0; });
  s.blocks_total = opt_.blocks, s.blocks_used = blocks_used_, s.block_tokens = opt_.block_tokens;
  s.block_bytes = pool_->block_bytes();  // fixed when the pool is made: readable from any thread
  s.cache_bytes = cache_bytes_;
  return s;
}

void Engine::admit_locked() {
  while (!queue_.empty() && static_cast<int64_t>(running_.size()) < opt_.parallel) {
    auto& r = queue_.front();
    if (r->cancel) {  // gone before it started
      r->end(Finish::Cancelled);
      metrics_.add(&Metrics::cancelled);
      queue_.pop_front();
      continue;
    }
    const int64_t need = blocks_for(*r);
    if (blocks_used_ + need > opt_.blocks) break;  // first come, first served: the head waits for blocks
    auto s = std::make_unique<Seq>(r, r->params.sampling);
    s->paged = std::make_unique<model::PagedSequence>(*pool_, need);
    s->blocks = need;
    blocks_used_ += need;
    running_.push_back(std::move(s));
    queue_.pop_front();
  }
}

void Engine::release(Seq& s, Finish f, const std::string& error) {
  if (f == Finish::Cancelled) metrics_.add(&Metrics::cancelled);
  else if (f == Finish::Error) metrics_.add(&Metrics::failed);
  else metrics_.add(&Metrics::completed);
  s.cache.reset();
  s.paged.reset();  // its blocks back to the pool
  {
    std::lock_guard<std::mutex> l(mu_);
    // blocks == 0 marks the sequence as ended: the loop drops it after this step.
    blocks_used_ -= s.blocks;
    s.blocks = 0;
  }
  s.req->end(f, error);  // last: a client that sees its answer end sees the pool and the counters updated
}

void Engine::emit(Seq& s, const torch::Tensor& logits) {
  // As infer::generate: sample, then stop at EOS, at the last position, or at max_tokens.
  const int64_t id = s.sampler.sample(logits);
  ++s.generated;
  TokenEvent e;
  e.id = id;
  if (s.req->params.top_logprobs >= 0) {
    auto lp = torch::log_softmax(logits.to(torch::kFloat32), -1);
    e.logprob = lp[id].item<float>();
    const int64_t k = std::min<int64_t>(s.req->params.top_logprobs, lp.size(0));
    if (k > 0) {
      auto [v, i] = lp.topk(k);
      for (int64_t j = 0; j < k; ++j) e.top.emplace_back(i[j].item<int64_t>(), v[j].item<float>());
    }
  }
  const auto now = Clock::now();
  if (s.generated == 1) metrics_.ttft.observe(std::chrono::duration<double>(now - s.req->arrived).count());
  else metrics_.token_latency.observe(std::chrono::duration<double>(now - s.last_token).count());
  s.last_token = now;
  metrics_.add(&Metrics::generated_tokens);
  s.req->push(std::move(e));
  const auto& eos = m_.config().eos_token_ids;
  if (std::find(eos.begin(), eos.end(), id) != eos.end()) return release(s, Finish::Eos);
  if (s.fed >= m_.config().max_position_embeddings) return release(s, Finish::Context);
  if (s.generated >= s.req->params.max_tokens) return release(s, Finish::Length);
  s.pending = id;
}

// Runs the next chunk of s's prompt, if any is left and the step's budget allows (its first token comes with the
// last chunk, when the prompt moves into its blocks). True when s is prefilled and still running at the start of
// the step: it decodes this step.
bool Engine::prefill(Seq& s, bool* budget) {
  if (s.req->cancel) {
    release(s, Finish::Cancelled);
    return false;
  }
  const int64_t P = static_cast<int64_t>(s.req->prompt.size());
  if (s.fed >= P) return true;
  if (!*budget) return false;
  *budget = false;
  try {
    torch::NoGradGuard ng;
    if (!s.cache) s.cache = m_.make_cache(1);
    const int64_t n = std::min(opt_.prefill_chunk, P - s.fed);
    auto ids = torch::tensor(std::vector<int64_t>(s.req->prompt.begin() + s.fed, s.req->prompt.begin() + s.fed + n),
                             torch::kInt64)
                   .view({1, n});
    auto h = m_.hidden(ids, s.cache.get(), torch::ones({1, n}, torch::kBool));
    s.fed += n;
    metrics_.add(&Metrics::prompt_tokens, static_cast<uint64_t>(n));
    if (s.fed == P) {
      s.paged->load(*s.cache);
      s.cache.reset();
      emit(s, m_.logits(h.select(1, n - 1))[0]);  // its first token: this step's
    }
  } catch (const std::exception& e) {
    release(s, Finish::Error, e.what());
  }
  return false;
}

void Engine::decode(const std::vector<Seq*>& batch) {
  std::vector<int64_t> ids;
  model::PagedBatch pb{pool_.get(), {}};
  for (auto* s : batch) ids.push_back(s->pending), pb.seqs.push_back(s->paged.get());
  try {
    torch::NoGradGuard ng;
    auto logits = m_.logits(m_.decode_paged(ids, pb).select(1, 0));  // [n, V]
    for (size_t j = 0; j < batch.size(); ++j) {
      batch[j]->fed += 1;
      emit(*batch[j], logits[static_cast<int64_t>(j)]);
    }
  } catch (const std::exception& e) {
    for (auto* s : batch)
      if (s->blocks > 0) release(*s, Finish::Error, e.what());
  }
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      admit_locked();
      cv_.wait(l, [&] { return stop_ || !running_.empty() || (!queue_.empty() && !draining_); });
      if (stop_ && running_.empty()) break;
      admit_locked();
    }
    // One step: a prompt chunk of the oldest sequence still prefilling, one token for each prefilled one, decoded
    // together in batches of up to kMaxDecodeBatch (the weights are read once per batch, not per sequence).
    std::vector<Seq*> ready;
    bool budget = true;
    for (auto& s : running_)
      if (prefill(*s, &budget)) ready.push_back(s.get());
    const size_t per = static_cast<size_t>(model::TransformerImpl::kMaxDecodeBatch);
    for (size_t i = 0; i < ready.size(); i += per)
      decode(std::vector<Seq*>(ready.begin() + static_cast<std::ptrdiff_t>(i),
                               ready.begin() + static_cast<std::ptrdiff_t>(std::min(ready.size(), i + per))));
    int64_t bytes = 0;
    std::lock_guard<std::mutex> l(mu_);
    running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& s) { return s->blocks == 0; }),
                   running_.end());
    for (auto& s : running_) bytes += (s->cache ? s->cache->stats().bytes : 0) + (s->paged ? s->paged->bytes() : 0);
    cache_bytes_ = bytes;
    if (stop_)  // cancel whatever still runs
      for (auto& s : running_) s->req->cancel = true;
  }
  std::lock_guard<std::mutex> l(mu_);
  for (auto& r : queue_) r->end(Finish::Cancelled);
  queue_.clear();
}

void Engine::drain(Clock::duration deadline) {
  const auto until = Clock::now() + deadline;
  {
    std::lock_guard<std::mutex> l(mu_);
    draining_ = true;
  }
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (running_.empty() && queue_.empty()) break;
      if (Clock::now() >= until) {
        for (auto& s : running_) s->req->cancel = true;
        for (auto& r : queue_) r->cancel = true;
      }
    }
    cv_.notify_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace mha2mla::serve
