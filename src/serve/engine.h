#pragma once
// The scheduler behind the server: continuous batching over one model. Requests wait in a bounded queue and are
// admitted at the next step when a running slot (--parallel) and their cache blocks are free; finished or
// cancelled sequences leave at once and return their blocks. Every step advances each running sequence by one
// prefill chunk or one token, so a long prompt never stalls the others' decoding for more than a chunk; the
// decoding sequences run through the layers together, in batches of up to 8, so the matrices are read once per
// batch.
//
// Cache blocks: every layer's cache lives in one pool of blocks of `block_tokens` tokens (model/paged_cache.h),
// allocated at start (--cache-memory). A sequence takes the blocks its prompt plus max_tokens can fill when it is
// admitted, so a running sequence never runs out, and gives them back when it ends. One prompt at a time is
// prefilled, a chunk per step, into a contiguous cache that then moves into its blocks; decoding steps append to
// the blocks and attend over them (kernels/paged_attention). Each sequence's arithmetic is its own, so its tokens
// and log-probabilities are the same whatever else runs.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "infer/sampling.h"
#include "model/transformer.h"
#include "serve/metrics.h"

namespace mha2mla::serve {

struct GenParams {
  int64_t max_tokens = 16;
  infer::SamplingParams sampling;
  int top_logprobs = -1;  // -1: none; k >= 0: the chosen token's log-probability and the k most likely
};

struct TokenEvent {
  int64_t id = 0;
  float logprob = 0;                            // log p(id), when asked for
  std::vector<std::pair<int64_t, float>> top;   // the top_logprobs most likely (id, log p), most likely first
};

// Why a sequence ended. Eos and Length are OpenAI's "stop" and "length" (Context: the model's positions ran out).
enum class Finish { None, Eos, Length, Context, Cancelled, Error };

// One request's link between its HTTP thread and the engine.
struct Request {
  std::vector<int64_t> prompt;
  GenParams params;
  std::atomic<bool> cancel{false};  // set by the HTTP side; the engine ends the sequence at its next step
  std::chrono::steady_clock::time_point arrived = std::chrono::steady_clock::now();

  // Waits for the next token; false once the sequence has ended and every token was taken (then `finish` and
  // `error` say why).
  bool next(TokenEvent* e);
  Finish finish_reason();
  std::string error();

  // Engine side.
  void push(TokenEvent e);
  void end(Finish f, std::string error = "");

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
  Finish finish_ = Finish::None;
  std::string error_;
};

struct EngineOptions {
  int64_t parallel = 8;         // sequences running at once
  int64_t block_tokens = 256;   // tokens per cache block (bench_kernels --only paged: smaller blocks cost the CPU kernels)
  int64_t blocks = 0;           // blocks in the pool
  int64_t max_queue = 64;       // requests waiting at most
  int64_t prefill_chunk = 512;  // prompt tokens per step of one sequence
};

class Engine {
 public:
  Engine(model::TransformerImpl& m, EngineOptions o, Metrics& metrics);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Bytes of one token in every layer's cache, as the model's runtime stores it.
  static double bytes_per_token(const model::TransformerImpl& m);
  // Why the model cannot be served from a paged cache of these options, "" when it can (checked before serving).
  static std::string unsupported(model::TransformerImpl& m, const EngineOptions& o);
  // The blocks a request reserves: its prompt and max_tokens, rounded up to whole blocks.
  int64_t blocks_for(const Request& r) const {
    const int64_t tokens = static_cast<int64_t>(r.prompt.size()) + r.params.max_tokens;
    return (tokens + opt_.block_tokens - 1) / opt_.block_tokens;
  }
  const EngineOptions& options() const { return opt_; }

  enum class Admit { Queued, QueueFull, NeverFits, Draining };
  // Queues r (its prompt and max_tokens already checked against the context). NeverFits: its blocks exceed the
  // whole pool.
  Admit submit(std::shared_ptr<Request> r);
  // Stops taking requests, lets the admitted ones run until `deadline`, cancels the rest, and stops the thread.
  void drain(std::chrono::steady_clock::duration deadline);
  EngineSnapshot snapshot() const;

 private:
  struct Seq;
  void loop();
  void admit_locked();
  // A prompt chunk when `budget` (one chunk per step) is left; true when s is prefilled and still running.
  bool prefill(Seq& s, bool* budget);
  void decode(const std::vector<Seq*>& batch);  // one token of each, at most kMaxDecodeBatch
  void emit(Seq& s, const torch::Tensor& logits);
  void release(Seq& s, Finish f, const std::string& error = "");

  model::TransformerImpl& m_;
  EngineOptions opt_;
  Metrics& metrics_;
  std::unique_ptr<model::BlockPool> pool_;  // its blocks are taken and given back by the engine thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Request>> queue_;
  std::vector<std::unique_ptr<Seq>> running_;  // touched by the engine thread; its size under mu_
  int64_t blocks_used_ = 0;
  int64_t cache_bytes_ = 0;
  bool draining_ = false, stop_ = false;
  std::thread thread_;
};

}  // namespace mha2mla::serve
