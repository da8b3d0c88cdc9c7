// mha2mla serve: an OpenAI-compatible HTTP server with continuous batching (src/serve/).
#include <csignal>
#include <cstdio>
#include <fstream>
#include <pthread.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/options.h"
#include "cli/runtime_flags.h"
#include "io/model_folder.h"
#include "model/transformer.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/text.h"

namespace mha2mla::cli {

namespace {

// "8G", "512M", "1000000" (bytes; K, M, G, T are powers of 1024) or "25%" of the machine's memory.
int64_t parse_memory(const std::string& s) {
  usage_check(!s.empty(), "--cache-memory: empty value");
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    usage_fail("--cache-memory: '" + s + "' is not a size (e.g. 8G, 512M or 25%)");
  }
  const std::string unit = s.substr(used);
  double mult = 1;
  if (unit == "%") {
    usage_check(v > 0 && v <= 100, "--cache-memory: a percentage must be in (0, 100]");
    const double phys = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    return static_cast<int64_t>(phys * v / 100.0);
  }
  if (unit == "K" || unit == "KiB") mult = 1024.0;
  else if (unit == "M" || unit == "MiB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TiB") mult = 1024.0 * 1024 * 1024 * 1024;
  else usage_check(unit.empty(), "--cache-memory: unknown unit '" + unit + "' (K, M, G, T or %)");
  usage_check(v > 0 && v * mult < 9e18, "--cache-memory: must be a positive size");
  return static_cast<int64_t>(v * mult);
}

}  // namespace

int cmd_serve(const Args& a) {
  std::string dir, memory = "25%", port_file;
  serve::ServerOptions so;
  serve::EngineOptions eo;
  model::RuntimeOptions rt;
  int64_t port = so.port, max_body = static_cast<int64_t>(so.max_body), shutdown_s = 30;
  OptionTable t("serve", "--model DIR [options]",
                "Serves the model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions, streamed or\n"
                "not), /v1/models, /health, /tokenize, /detokenize and /metrics (Prometheus). Requests are batched\n"
                "continuously: they join the running ones at the next step and leave when done.");
  t.required("model", "DIR", "model folder (config.json, safetensors, tokenizer.json)", [&](auto& v) { dir = v; })
      .text("host", "ADDR", "address to listen on (0.0.0.0 exposes the server to the network)", so.host)
      .integer("port", "N", "port to listen on; 0 picks a free one (printed, and written to --port-file)", port, 0)
      .text("port-file", "PATH", "write the port here once listening (for scripts)", port_file)
      .text("alias", "NAME", "the model name clients use", so.model_name, "the model folder's name")
      .integer("parallel", "N", "sequences running at once; more wait in the queue", eo.parallel, 1)
      .text("cache-memory", "SIZE", "memory for the KV caches of running sequences: bytes with K/M/G, or N% of RAM",
            memory)
      .integer("cache-block", "N", "tokens per cache block: the pool's unit of allocation (a multiple of a per-channel quantization group)", eo.block_tokens, 1)
      .integer("max-queue", "N", "requests waiting at most; beyond, 503 with Retry-After", eo.max_queue, 0)
      .integer("prefill-chunk", "N", "prompt tokens a sequence prefills per step (long prompts do not stall others)",
               eo.prefill_chunk, 1)
      .text("api-key", "KEY", "require 'Authorization: Bearer KEY' on every endpoint but /health", so.api_key)
      .integer("max-body", "BYTES", "largest request body accepted (413 beyond)", max_body, 1)
      .integer("shutdown-timeout", "S", "on SIGINT/SIGTERM, seconds running requests get to finish before they are cancelled",
               shutdown_s, 0);
  add_runtime_options(t, rt, kAllRuntime);
  t.note("With --temperature 0 a request's tokens are what `mha2mla generate --temperature 0` gives for the same\n"
         "prompt, whatever else is running: every sequence decodes over its own cache.");
  if (!t.parse(a)) return 0;
  usage_check(port <= 65535, "--port must be at most 65535");
  so.port = static_cast<int>(port);
  so.max_body = static_cast<size_t>(max_body);
  const int64_t cache_bytes = parse_memory(memory);
  io::check_model_folder(dir, io::kModelAll);
  if (so.model_name.empty()) {
    std::string d = dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    so.model_name = d.substr(d.find_last_of('/') == std::string::npos ? 0 : d.find_last_of('/') + 1);
  }

  // SIGINT and SIGTERM go to sigwait below: blocked here, before any thread starts, so every thread inherits it.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  serve::Metrics metrics;
  serve::Server server(so, metrics);
  server.start();
  std::fprintf(stderr, "serve: listening on http://%s:%d (loading %s)\n", so.host.c_str(), server.port(), dir.c_str());
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << server.port() << "\n";
    check(std::rename(tmp.c_str(), port_file.c_str()) == 0, "--port-file: cannot write " + port_file);
  }
  auto tok = tok::Tokenizer::load(dir);
  auto m = model::load_model(dir, rt);
  const double per_token = serve::Engine::bytes_per_token(*m);
  eo.blocks = static_cast<int64_t>(static_cast<double>(cache_bytes) / (per_token * static_cast<double>(eo.block_tokens)));
  check(eo.blocks >= 1, "--cache-memory " + memory + " holds no block of " + std::to_string(eo.block_tokens) +
                            " tokens (" + format_bytes(static_cast<int64_t>(per_token * eo.block_tokens)) + ")");
  if (auto why = serve::Engine::unsupported(*m, eo); !why.empty()) fail("serve: " + dir + ": " + why);
  serve::Engine engine(*m, eo, metrics);
  serve::Backend backend{m.get(), &tok, &engine, serve::model_chat_format(dir)};
  server.ready(backend);
  std::fprintf(stderr,
               "serve: ready: model '%s', %lld cache blocks of %lld tokens (%s each, %lld tokens in all), parallel %lld; "
               "chat: %s\n",
               so.model_name.c_str(), static_cast<long long>(eo.blocks), static_cast<long long>(eo.block_tokens),
               format_bytes(static_cast<int64_t>(per_token * eo.block_tokens)).c_str(),
               static_cast<long long>(eo.blocks * eo.block_tokens), static_cast<long long>(eo.parallel),
               backend.chat.format ? serve::chat_format_name(*backend.chat.format) : backend.chat.why_not.c_str());

  int sig = 0;
  sigwait(&sigs, &sig);
  std::fprintf(stderr, "serve: %s: finishing running requests (up to %llds), refusing new ones\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM", static_cast<long long>(shutdown_s));
  engine.drain(std::chrono::seconds(shutdown_s));
  server.stop();
  std::fprintf(stderr, "serve: stopped\n");
  return 0;
}

}  // namespace mha2mla::cli
