#pragma once
// mha2mla serve's HTTP side: OpenAI's completions and chat completions (streamed as Server-Sent Events or not),
// models, health, tokenize/detokenize and Prometheus metrics, over the engine (serve/engine.h). Every bad request
// gets {"error": {"message", "type", "param", "code"}} with its status, and the server keeps serving.
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "serve/chat_template.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace mha2mla::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;             // 0: any free port (Server::port() says which)
  std::string api_key;         // non-empty: every endpoint but /health wants "Authorization: Bearer KEY"
  std::string model_name;      // what /v1/models lists and requests may name
  size_t max_body = 8 << 20;   // bytes of a request body at most (larger: 413)
  int http_threads = 64;       // connections served at once (streams hold one each)
};

// What the server answers with once the model is loaded.
struct Backend {
  model::TransformerImpl* model = nullptr;
  const tok::Tokenizer* tokenizer = nullptr;
  Engine* engine = nullptr;
  ModelChat chat;  // the chat format, or why there is none
};

class Server {
 public:
  Server(ServerOptions o, Metrics& metrics);
  ~Server();
  // Binds and starts serving on a thread of its own; /health answers 503 until ready(). Throws Error when the
  // address cannot be bound.
  void start();
  int port() const { return port_; }
  void ready(Backend b);
  // Stops accepting connections and waits for the handlers in flight (drain the engine first).
  void stop();

 private:
  void routes();
  ServerOptions opt_;
  Metrics& metrics_;
  std::unique_ptr<httplib::Server> http_;
  Backend backend_;
  std::atomic<bool> ready_{false};
  int port_ = 0;
  int listen_fd_ = -1;  // the listening socket, once bound (start())
  std::thread thread_;
};

}  // namespace mha2mla::serve
