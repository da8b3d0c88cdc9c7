#pragma once
// The server's counters and latency histograms, written as Prometheus text (GET /metrics).
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace mha2mla::serve {

// Cumulative buckets over seconds, as Prometheus histograms are.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double seconds);
  // name_bucket{le=...}, name_sum, name_count lines.
  std::string text(const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t n_ = 0;
};

// What the engine holds at one moment (Engine::snapshot).
struct EngineSnapshot {
  int64_t queued = 0, running = 0;
  int64_t blocks_total = 0, blocks_used = 0, block_tokens = 0;
  int64_t block_bytes = 0;       // bytes one block of tokens takes in every layer's cache
  int64_t cache_bytes = 0;       // bytes the running sequences' caches hold now
};

struct Metrics {
  std::mutex mu;
  uint64_t requests = 0, rejected = 0, cancelled = 0, completed = 0, failed = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0;
  Histogram ttft{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
  Histogram token_latency{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};

  void add(uint64_t Metrics::*field, uint64_t n = 1) {
    std::lock_guard<std::mutex> l(mu);
    this->*field += n;
  }
  std::string prometheus(const EngineSnapshot& s);
};

}  // namespace mha2mla::serve
