// Load generator for `mha2mla serve` (or any OpenAI-compatible server): N streamed completions at concurrency C,
// each a prompt of P random token ids and at most M output tokens. Prints one JSON object: throughput, time to
// first token and time per output token (p50, p99), and how many requests failed.
// For a soak: --whole-every K sends every K-th request unstreamed, --cancel-every K hangs up every K-th stream
// after its first tokens (those count as cancelled, not failed); --pid PID reports the server's resident memory
// after the first 100 requests and at the end.
//
//   serve_load --port 8080 --requests 64 --concurrency 16 --prompt-tokens 2048 --max-tokens 64
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "serve/http.h"

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  bool ok = false, cancelled = false;
  bool finished = false;  // a streamed choice came with its finish_reason (a first token of EOS sends no token)
  double ttft = 0, tpot = 0, total = 0;
  int64_t tokens = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

// VmRSS of a process, in bytes (0 when unreadable).
int64_t rss_bytes(int64_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) return 0;
  char line[256];
  long long kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmRSS: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return kb * 1024;
}

int usage() {
  std::fprintf(stderr,
               "usage: serve_load [--host H] [--port N] [--requests N] [--concurrency C] [--prompt-tokens P]\n"
               "                  [--max-tokens M] [--vocab V] [--api-key KEY] [--model NAME]\n"
               "                  [--whole-every K] [--cancel-every K] [--pid SERVER_PID]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1", key, model;
  int port = 8080;
  int64_t n = 32, conc = 8, prompt_tokens = 512, max_tokens = 32, vocab = 1000, whole_every = 0, cancel_every = 0;
  int64_t pid = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return usage();
    const std::string v = argv[++i];
    try {
      if (a == "--host") host = v;
      else if (a == "--port") port = std::stoi(v);
      else if (a == "--requests") n = std::stoll(v);
      else if (a == "--concurrency") conc = std::stoll(v);
      else if (a == "--prompt-tokens") prompt_tokens = std::stoll(v);
      else if (a == "--max-tokens") max_tokens = std::stoll(v);
      else if (a == "--vocab") vocab = std::stoll(v);
      else if (a == "--api-key") key = v;
      else if (a == "--model") model = v;
      else if (a == "--whole-every") whole_every = std::stoll(v);
      else if (a == "--cancel-every") cancel_every = std::stoll(v);
      else if (a == "--pid") pid = std::stoll(v);
      else return usage();
    } catch (const std::exception&) {
      return usage();
    }
  }
  if (n < 1 || conc < 1 || prompt_tokens < 1 || max_tokens < 1 || vocab < 2) return usage();
  std::vector<Result> results(static_cast<size_t>(n));
  std::atomic<int64_t> next{0};
  const auto t0 = Clock::now();
  auto worker = [&] {
    httplib::Client c(host, port);
    c.set_read_timeout(3600, 0);
    for (int64_t i; (i = next.fetch_add(1)) < n;) {
      std::mt19937 rng(static_cast<unsigned>(i));  // distinct prompts: no request shares another's prefix
      std::vector<int64_t> ids(static_cast<size_t>(prompt_tokens));
      for (auto& id : ids) id = 1 + static_cast<int64_t>(rng() % static_cast<unsigned>(vocab - 1));
      // logprobs: every token gets an event of its own, text or not (a held-back partial character, say).
      const bool whole = whole_every > 0 && i % whole_every == whole_every - 1;
      const bool hang_up = !whole && cancel_every > 0 && i % cancel_every == cancel_every - 1;
      json body{{"prompt", ids}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", !whole}, {"logprobs", 0}};
      if (!model.empty()) body["model"] = model;
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = body.dump();
      req.set_header("Content-Type", "application/json");
      if (!key.empty()) req.set_header("Authorization", "Bearer " + key);
      Result& r = results[static_cast<size_t>(i)];
      const auto start = Clock::now();
      Clock::time_point first, last;
      std::string buf;
      req.content_receiver = [&](const char* d, size_t len, uint64_t, uint64_t) {
        buf.append(d, len);
        size_t p;
        while ((p = buf.find("\n\n")) != std::string::npos) {
          const std::string ev = buf.substr(0, p);
          buf.erase(0, p + 2);
          if (ev.rfind("data: {", 0) != 0) continue;
          const auto j = json::parse(ev.substr(6), nullptr, false);
          if (!j.is_object() || !j.contains("choices")) continue;
          if (!j["choices"][0]["finish_reason"].is_null()) {
            r.finished = true;
            continue;
          }
          const auto now = Clock::now();
          if (r.tokens == 0) first = now;
          last = now;
          ++r.tokens;  // one event per generated token (the server sends one per token)
        }
        return !(hang_up && r.tokens >= 2);
      };
      if (whole) req.content_receiver = nullptr;
      auto res = c.send(req);
      const auto end = Clock::now();
      if (hang_up && r.tokens >= 2) {
        r.cancelled = true;
        continue;
      }
      if (whole) {  // one answer: its tokens from usage, the first token's time unknown
        const auto j = res ? json::parse(res->body, nullptr, false) : json();
        r.ok = res && res->status == 200 && j.is_object() && j.contains("usage");
        if (r.ok) r.tokens = j["usage"]["completion_tokens"].get<int64_t>();
        r.total = std::chrono::duration<double>(end - start).count();
        continue;
      }
      r.ok = res && res->status == 200 && (r.tokens > 0 || r.finished);
      if (!r.ok || r.tokens == 0) continue;
      r.ttft = std::chrono::duration<double>(first - start).count();
      r.tpot = r.tokens > 1 ? std::chrono::duration<double>(last - first).count() / static_cast<double>(r.tokens - 1) : 0;
      r.total = std::chrono::duration<double>(end - start).count();
    }
  };
  std::vector<std::thread> threads;
  for (int64_t k = 0; k < conc; ++k) threads.emplace_back(worker);
  int64_t rss_early = 0;
  if (pid > 0) {  // the server's resident memory once 100 requests are done
    while (next.load() < std::min<int64_t>(n, 100 + conc)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    rss_early = rss_bytes(pid);
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> ttft, tpot;
  int64_t tokens = 0, failed = 0, cancelled = 0;
  for (const auto& r : results) {
    if (r.cancelled) {
      ++cancelled;
      continue;
    }
    if (!r.ok) {
      ++failed;
      continue;
    }
    tokens += r.tokens;
    if (r.ttft == 0) continue;  // unstreamed, or ended before its first token: no per-token times
    ttft.push_back(r.ttft);
    if (r.tokens > 1) tpot.push_back(r.tpot);
  }
  json out{{"requests", n},
           {"concurrency", conc},
           {"prompt_tokens", prompt_tokens},
           {"max_tokens", max_tokens},
           {"failed", failed},
           {"cancelled", cancelled},
           {"wall_s", wall},
           {"output_tokens", tokens},
           {"output_tokens_per_s", tokens / wall},
           {"requests_per_s", static_cast<double>(n - failed - cancelled) / wall},
           {"ttft_s", {{"p50", percentile(ttft, 50)}, {"p99", percentile(ttft, 99)}}},
           {"tpot_s", {{"p50", percentile(tpot, 50)}, {"p99", percentile(tpot, 99)}}}};
  if (pid > 0) {
    const int64_t rss_end = rss_bytes(pid);
    out["server_rss_bytes"] = {{"after_100", rss_early}, {"end", rss_end}};
  }
  std::printf("%s\n", out.dump().c_str());
  return failed ? 1 : 0;
}
