#pragma once
// An in-process server over the shipped kjv-mha model, for the server tests: the engine and HTTP server of
// `mha2mla serve`, on a free port of 127.0.0.1, with an httplib client beside it.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "infer/generate.h"
#include "model/transformer.h"
#include "serve/engine.h"
#include "serve/http.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"

namespace mha2mla::testutil {

inline std::string kjv_dir() { return std::string(MHA2MLA_SOURCE_DIR) + "/models/kjv-mha"; }

// The model and tokenizer, loaded once for every test of the binary.
struct Loaded {
  model::Transformer model;
  tok::Tokenizer tokenizer;
  static Loaded& get() {
    static Loaded l{model::load_model(kjv_dir(), model::RuntimeOptions{}), tok::Tokenizer::load(kjv_dir())};
    return l;
  }
};

// The text the shipped model decodes greedily after `prompt` ids, as `mha2mla generate --temperature 0` does,
// and how many tokens it generated (EOS included).
inline std::pair<std::string, size_t> greedy_after(const std::vector<int64_t>& prompt, int64_t max_new) {
  auto& l = Loaded::get();
  infer::GenerateOptions opt;
  opt.max_new = max_new;
  opt.stop_ids = l.model->config().eos_token_ids;
  auto out = infer::generate(*l.model, {prompt}, opt);
  std::vector<int32_t> ids;
  for (auto id : out[0])
    if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) == opt.stop_ids.end()) ids.push_back(static_cast<int32_t>(id));
  return {l.tokenizer.decode(ids, true), out[0].size()};
}

// The same for a text prompt encoded as `generate` encodes it (the tokenizer's special tokens added).
inline std::pair<std::string, size_t> generate_greedy(const std::string& prompt, int64_t max_new) {
  auto p32 = Loaded::get().tokenizer.encode(prompt, true);
  return greedy_after(std::vector<int64_t>(p32.begin(), p32.end()), max_new);
}

struct TestServer {
  serve::Metrics metrics;
  std::unique_ptr<serve::Engine> engine;
  std::unique_ptr<serve::Server> server;
  explicit TestServer(serve::EngineOptions eo = {}, serve::ServerOptions so = {},
                      serve::ModelChat chat = {std::nullopt, "the model folder has no tokenizer_config.json"}) {
    auto& l = Loaded::get();
    if (eo.blocks == 0) eo.blocks = 4096;
    so.port = 0;
    if (so.model_name.empty()) so.model_name = "kjv-mha";
    engine = std::make_unique<serve::Engine>(*l.model, eo, metrics);
    server = std::make_unique<serve::Server>(so, metrics);
    server->start();
    server->ready({l.model.get(), &l.tokenizer, engine.get(), chat});
  }
  ~TestServer() {
    engine->drain(std::chrono::seconds(0));
    server->stop();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(120, 0);
    return c;
  }
  // POST a JSON body; the status and the parsed answer (null when it is not JSON).
  std::pair<int, nlohmann::json> post(const std::string& path, const std::string& body,
                                      const httplib::Headers& h = {}) const {
    auto c = client();
    auto r = c.Post(path.c_str(), h, body, "application/json");
    if (!r) {  // a transport failure: say which, for the test that meets it
      std::fprintf(stderr, "POST %s: %s\n", path.c_str(), httplib::to_string(r.error()).c_str());
      return {-1, nullptr};
    }
    return {r->status, nlohmann::json::parse(r->body, nullptr, false)};
  }
  // A streamed POST: on_data sees the body as it arrives; returning false hangs up.
  httplib::Result post_stream(const std::string& path, const std::string& body,
                              std::function<bool(const char*, size_t)> on_data) const {
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [on_data](const char* d, size_t n, uint64_t, uint64_t) { return on_data(d, n); };
    auto c = client();
    return c.send(req);
  }
  // A gauge or counter from /metrics.
  double metric(const std::string& name) const {
    auto c = client();
    auto r = c.Get("/metrics");
    if (!r) return -1;
    const std::string key = "\n" + name + " ";
    const auto p = r->body.find(key);
    return p == std::string::npos ? -1 : std::stod(r->body.substr(p + key.size()));
  }
};

}  // namespace mha2mla::testutil
