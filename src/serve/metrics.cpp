#include "serve/metrics.h"

#include <sstream>

namespace mha2mla::serve {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double s) {
  std::lock_guard<std::mutex> l(mu_);
  size_t i = 0;
  while (i < bounds_.size() && s > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += s;
  ++n_;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> l(mu_);
  std::ostringstream o;
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    o << name << "_bucket{le=\"" << bounds_[i] << "\"} " << cum << "\n";
  }
  o << name << "_bucket{le=\"+Inf\"} " << n_ << "\n" << name << "_sum " << sum_ << "\n" << name << "_count " << n_ << "\n";
  return o.str();
}

std::string Metrics::prometheus(const EngineSnapshot& s) {
  std::ostringstream o;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
  };
  {
    std::lock_guard<std::mutex> l(mu);
    metric("mha2mla_requests_total", "counter", "generation requests received", static_cast<double>(requests));
    metric("mha2mla_requests_rejected_total", "counter", "requests refused (queue full or shutting down)",
           static_cast<double>(rejected));
    metric("mha2mla_requests_completed_total", "counter", "requests that ran to their end", static_cast<double>(completed));
    metric("mha2mla_requests_cancelled_total", "counter", "requests cancelled (client gone, stop string, shutdown)",
           static_cast<double>(cancelled));
    metric("mha2mla_requests_failed_total", "counter", "requests that ended in an error", static_cast<double>(failed));
    metric("mha2mla_prompt_tokens_total", "counter", "prompt tokens prefilled", static_cast<double>(prompt_tokens));
    metric("mha2mla_generated_tokens_total", "counter", "tokens generated", static_cast<double>(generated_tokens));
  }
  metric("mha2mla_queue_length", "gauge", "requests waiting for cache blocks or a slot", static_cast<double>(s.queued));
  metric("mha2mla_running_sequences", "gauge", "sequences being prefilled or decoded", static_cast<double>(s.running));
  metric("mha2mla_cache_blocks_total", "gauge", "cache blocks in the pool", static_cast<double>(s.blocks_total));
  metric("mha2mla_cache_blocks_used", "gauge", "cache blocks held by running sequences", static_cast<double>(s.blocks_used));
  metric("mha2mla_cache_blocks_free", "gauge", "cache blocks free", static_cast<double>(s.blocks_total - s.blocks_used));
  metric("mha2mla_cache_block_tokens", "gauge", "tokens per cache block", static_cast<double>(s.block_tokens));
  metric("mha2mla_cache_block_bytes", "gauge", "bytes per cache block, every layer", static_cast<double>(s.block_bytes));
  metric("mha2mla_cache_bytes", "gauge", "bytes the running sequences' caches hold", static_cast<double>(s.cache_bytes));
  o << ttft.text("mha2mla_time_to_first_token_seconds", "from arrival to the first generated token");
  o << token_latency.text("mha2mla_time_per_output_token_seconds", "between consecutive generated tokens");
  return o.str();
}

}  // namespace mha2mla::serve
