#include "serve/server.h"

#include <sys/socket.h>

#include <chrono>
#include <ctime>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "serve/http.h"
#include "serve/text_stream.h"
#include "util/error.h"

namespace mha2mla::serve {

using json = nlohmann::json;

namespace {

// A request the server refuses: its status and OpenAI's error type.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int s, std::string msg, std::string t = "invalid_request_error", std::string p = "", std::string c = "")
      : std::runtime_error(std::move(msg)), status(s), type(std::move(t)), param(std::move(p)), code(std::move(c)) {}
};

[[noreturn]] void bad(const std::string& msg, const std::string& param = "") { throw ApiError(400, msg, "invalid_request_error", param); }

json error_body(const std::string& msg, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", msg},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, error_body(e.what(), e.type, e.param, e.code));
}

json parse_body(const httplib::Request& req) {
  try {
    json j = json::parse(req.body);
    if (!j.is_object()) bad("the request body must be a JSON object");
    return j;
  } catch (const json::parse_error& e) {
    bad(std::string("the request body is not valid JSON: ") + e.what());
  }
}

// Typed fields: absent or null -> the default; the wrong type -> 400 naming the field.
double number_field(const json& j, const char* name, double def, double lo, double hi) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) bad(std::string("'") + name + "' must be a number", name);
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi))
    bad(std::string("'") + name + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), name);
  return v;
}

int64_t int_field(const json& j, const char* name, int64_t def, int64_t lo, int64_t hi) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number_integer()) bad(std::string("'") + name + "' must be an integer", name);
  // Compare as double first: a huge unsigned value must not wrap into range.
  const double d = it->get<double>();
  if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
    bad(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi), name);
  return it->get<int64_t>();
}

bool bool_field(const json& j, const char* name, bool def) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) bad(std::string("'") + name + "' must be true or false", name);
  return it->get<bool>();
}

std::vector<std::string> stop_field(const json& j) {
  auto it = j.find("stop");
  if (it == j.end() || it->is_null()) return {};
  if (it->is_string()) return {it->get<std::string>()};
  if (!it->is_array() || it->size() > 4) bad("'stop' must be a string or a list of at most 4 strings", "stop");
  std::vector<std::string> out;
  for (const auto& s : *it) {
    if (!s.is_string()) bad("'stop' must be a string or a list of at most 4 strings", "stop");
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::string finish_name(Finish f, bool stop_string) {
  if (stop_string || f == Finish::Eos) return "stop";
  if (f == Finish::Length || f == Finish::Context) return "length";
  if (f == Finish::Cancelled) return "cancelled";
  return "error";
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> n{0};
  return std::string(prefix) + std::to_string(std::time(nullptr)) + "-" + std::to_string(n++);
}

// One generation request, as both endpoints describe it.
struct Job {
  std::vector<int64_t> prompt;
  std::string prompt_text;  // for echo
  GenParams params;
  std::vector<std::string> stop;
  bool stream = false, echo = false, chat = false;
};

// The sampling fields both endpoints share, checked against the model's context.
void read_common(const json& j, const Backend& b, Job& job, int64_t max_tokens_default) {
  const int64_t ctx = b.model->config().max_position_embeddings;
  auto& p = job.params;
  p.sampling.temperature = number_field(j, "temperature", 1.0, 0.0, 2.0);
  p.sampling.top_p = number_field(j, "top_p", 1.0, 0.0, 1.0);
  if (p.sampling.top_p <= 0) bad("'top_p' must be above 0", "top_p");
  p.sampling.seed = static_cast<uint64_t>(int_field(j, "seed", static_cast<int64_t>(std::random_device{}() & 0x7fffffff), 0,
                                                    std::numeric_limits<int64_t>::max()));
  if (int_field(j, "n", 1, 1, 1) != 1) bad("'n' must be 1", "n");
  const char* mt = j.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  int64_t max_tokens = int_field(j, mt, max_tokens_default, 1, ctx);
  job.stop = stop_field(j);
  job.stream = bool_field(j, "stream", false);
  const int64_t P = static_cast<int64_t>(job.prompt.size());
  if (P >= ctx)
    bad("the prompt has " + std::to_string(P) + " tokens; the model's context holds " + std::to_string(ctx) +
            " (prompt and at least one new token)",
        job.chat ? "messages" : "prompt");
  p.max_tokens = std::min(max_tokens, ctx - P);  // capped by the context
}

std::vector<int64_t> encode(const Backend& b, const std::string& text, bool add_special) {
  std::vector<int32_t> ids;
  try {
    ids = b.tokenizer->encode(text, add_special);
  } catch (const std::exception& e) {
    bad(std::string("the prompt cannot be tokenized: ") + e.what());
  }
  return {ids.begin(), ids.end()};
}

std::vector<int64_t> token_ids(const json& arr, const Backend& b, const char* field) {
  const int64_t V = b.model->config().vocab_size;
  std::vector<int64_t> ids;
  for (const auto& t : arr) {
    if (!t.is_number_integer()) bad(std::string("'") + field + "' must be a string or a list of token ids", field);
    const double d = t.get<double>();
    if (d < 0 || d >= static_cast<double>(V))
      bad(std::string("'") + field + "' holds token id " + t.dump() + ", outside the vocabulary [0, " + std::to_string(V) + ")", field);
    ids.push_back(t.get<int64_t>());
  }
  return ids;
}

void check_model(const json& j, const std::string& name) {
  auto it = j.find("model");
  if (it == j.end() || it->is_null()) return;
  if (!it->is_string()) bad("'model' must be a string", "model");
  if (it->get<std::string>() != name)
    throw ApiError(400, "the model '" + it->get<std::string>() + "' is not served here; this server serves '" + name + "'",
                   "invalid_request_error", "model", "model_not_found");
}

std::string token_text(const Backend& b, int64_t id) { return b.tokenizer->decode({static_cast<int32_t>(id)}, false); }

// Log-probabilities of the tokens in events [from, to), as completions and chat describe them.
json completion_logprobs(const Backend& b, const std::vector<TokenEvent>& ev, size_t from, size_t to, size_t offset) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (size_t i = from; i < to; ++i) {
    const auto t = token_text(b, ev[i].id);
    tokens.push_back(t);
    lps.push_back(ev[i].logprob);
    json top = json::object();
    for (const auto& [id, lp] : ev[i].top) top[token_text(b, id)] = lp;
    tops.push_back(top);
    offs.push_back(offset);
    offset += t.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json chat_logprobs(const Backend& b, const std::vector<TokenEvent>& ev, size_t from, size_t to) {
  auto entry = [&](int64_t id, float lp) {
    const auto t = token_text(b, id);
    return json{{"token", t}, {"logprob", lp}, {"bytes", std::vector<int>(t.begin(), t.end())}};
  };
  json content = json::array();
  for (size_t i = from; i < to; ++i) {
    json e = entry(ev[i].id, ev[i].logprob);
    e["top_logprobs"] = json::array();
    for (const auto& [id, lp] : ev[i].top) e["top_logprobs"].push_back(entry(id, lp));
    content.push_back(e);
  }
  return {{"content", content}};
}

// Pulls r's tokens into `text` and `events` until the sequence ends, its text meets a stop string (the sequence is
// then cancelled) or on_token, given each token's newly final text, returns false (a client gone): false then.
template <class OnToken>
bool pull_tokens(Request& r, TextStream& text, std::vector<TokenEvent>& events, const OnToken& on_token) {
  TokenEvent e;
  while (r.next(&e)) {
    events.push_back(e);
    if (!on_token(text.push(e.id))) return false;
    if (text.stopped()) {
      r.cancel = true;
      break;
    }
  }
  return true;
}

}  // namespace

Server::Server(ServerOptions o, Metrics& metrics)
    : opt_(std::move(o)), metrics_(metrics), http_(std::make_unique<httplib::Server>()) {}

Server::~Server() { stop(); }

void Server::ready(Backend b) {
  backend_ = b;
  ready_ = true;
}

void Server::stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void Server::start() {
  routes();
  const int n = opt_.http_threads;
  http_->new_task_queue = [n] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http_->set_payload_max_length(opt_.max_body);
  // Debian's cpp-httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into the library), so a
  // burst of new connections overflows it and the kernel drops some (16 clients at once did, on a busy machine).
  // The socket-options hook sees the listening socket first; once bound, it listens again with the system's
  // largest backlog, which Linux applies to a socket already listening.
  http_->set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    if (listen_fd_ < 0) listen_fd_ = static_cast<int>(sock);
  });
  if (opt_.port == 0) {
    port_ = http_->bind_to_any_port(opt_.host);
    check(port_ > 0, "serve: cannot bind to " + opt_.host + " on any port");
  } else {
    check(http_->bind_to_port(opt_.host, opt_.port),
          "serve: cannot bind to " + opt_.host + ":" + std::to_string(opt_.port) + " (in use, or not an address here)");
    port_ = opt_.port;
  }
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
}

void Server::routes() {
  auto& s = *http_;
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + opt_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    send_json(res, 401, error_body("missing or wrong API key (Authorization: Bearer KEY)", "authentication_error", "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_json(res, 500, error_body(e.what(), "server_error", "", ""));
    }
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 404 ? "no endpoint " + req.method + " " + req.path
                          : res.status == 413 ? "the request body is larger than the server accepts (--max-body)"
                                              : "HTTP " + std::to_string(res.status);
    send_json(res, res.status, error_body(msg, "invalid_request_error", "", ""));
  });

  auto need_ready = [this] {
    if (!ready_) throw ApiError(503, "the model is still loading", "server_error");
  };

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_) send_json(res, 200, {{"status", "ok"}});
    else send_json(res, 503, {{"status", "loading"}});
  });

  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200,
              {{"object", "list"},
               {"data", json::array({{{"id", opt_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "mha2mla"}}})}});
  });

  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    EngineSnapshot snap;
    if (ready_) snap = backend_.engine->snapshot();
    res.set_content(metrics_.prometheus(snap), "text/plain; version=0.0.4");
  });

  s.Post("/tokenize", [this, need_ready](const httplib::Request& req, httplib::Response& res) {
    need_ready();
    const json j = parse_body(req);
    const auto it = j.find("content");
    if (it == j.end() || !it->is_string()) bad("'content' must be a string", "content");
    send_json(res, 200, {{"tokens", encode(backend_, it->get<std::string>(), bool_field(j, "add_special", false))}});
  });

  s.Post("/detokenize", [this, need_ready](const httplib::Request& req, httplib::Response& res) {
    need_ready();
    const json j = parse_body(req);
    const auto it = j.find("tokens");
    if (it == j.end() || !it->is_array()) bad("'tokens' must be a list of token ids", "tokens");
    const auto ids = token_ids(*it, backend_, "tokens");
    send_json(res, 200, {{"content", backend_.tokenizer->decode(std::vector<int32_t>(ids.begin(), ids.end()), false)}});
  });

  // Both generation endpoints: parse into a Job, run it, answer as a whole or as a stream.
  auto generate = [this, need_ready](const httplib::Request& req, httplib::Response& res, bool chat) {
    need_ready();
    metrics_.add(&Metrics::requests);
    const json j = parse_body(req);
    check_model(j, opt_.model_name);
    const Backend& b = backend_;
    auto job = std::make_shared<Job>();
    job->chat = chat;
    if (chat) {
      if (!b.chat.format) throw ApiError(400, "chat: " + b.chat.why_not, "invalid_request_error", "messages");
      const auto it = j.find("messages");
      if (it == j.end() || !it->is_array() || it->empty()) bad("'messages' must be a non-empty list", "messages");
      std::vector<ChatMessage> msgs;
      for (const auto& m : *it) {
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
            !m["content"].is_string())
          bad("each message must be {\"role\": string, \"content\": string}", "messages");
        msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      std::string prompt;
      try {
        prompt = render_chat(*b.chat.format, msgs);
      } catch (const Error& e) {
        bad(e.what(), "messages");
      }
      job->prompt = encode(b, prompt, /*add_special=*/false);  // the format writes its own special tokens
      const bool lp = bool_field(j, "logprobs", false);
      const int64_t top = int_field(j, "top_logprobs", 0, 0, 20);
      job->params.top_logprobs = lp ? static_cast<int>(top) : -1;
    } else {
      const auto it = j.find("prompt");
      if (it == j.end()) bad("'prompt' is required", "prompt");
      if (it->is_string()) {
        job->prompt_text = it->get<std::string>();
        job->prompt = encode(b, job->prompt_text, /*add_special=*/true);  // as `generate` encodes it
      } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
        job->prompt_text = (*it)[0].get<std::string>();
        job->prompt = encode(b, job->prompt_text, true);
      } else if (it->is_array()) {
        job->prompt = token_ids(*it, b, "prompt");
        job->prompt_text = b.tokenizer->decode(std::vector<int32_t>(job->prompt.begin(), job->prompt.end()), false);
      } else {
        bad("'prompt' must be a string or a list of token ids", "prompt");
      }
      job->echo = bool_field(j, "echo", false);
      job->params.top_logprobs = static_cast<int>(int_field(j, "logprobs", -1, 0, 20));
    }
    if (job->prompt.empty()) bad("the prompt encodes to no tokens", chat ? "messages" : "prompt");
    read_common(j, b, *job, chat ? b.model->config().max_position_embeddings : 16);

    auto r = std::make_shared<Request>();
    r->prompt = job->prompt;
    r->params = job->params;
    switch (b.engine->submit(r)) {
      case Engine::Admit::Queued: break;
      case Engine::Admit::QueueFull:
        metrics_.add(&Metrics::rejected);
        res.set_header("Retry-After", "1");
        throw ApiError(503, "the server is busy: the queue is full (--max-queue); retry later", "server_error");
      case Engine::Admit::Draining:
        metrics_.add(&Metrics::rejected);
        res.set_header("Retry-After", "5");
        throw ApiError(503, "the server is shutting down", "server_error");
      case Engine::Admit::NeverFits:
        bad("the prompt and max_tokens need " +
            std::to_string(b.engine->blocks_for(*r)) +
            " cache blocks; the whole pool has " + std::to_string(b.engine->options().blocks) + " (--cache-memory)");
    }

    const std::string id = new_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    const std::string model = opt_.model_name;
    const int64_t P = static_cast<int64_t>(job->prompt.size());
    auto base = [=](const char* object) { return json{{"id", id}, {"object", object}, {"created", created}, {"model", model}}; };
    auto usage = [P](int64_t n) { return json{{"prompt_tokens", P}, {"completion_tokens", n}, {"total_tokens", P + n}}; };

    if (!job->stream) {
      TextStream text(*b.tokenizer, job->stop, b.model->config().eos_token_ids);
      std::vector<TokenEvent> events;
      pull_tokens(*r, text, events, [](const std::string&) { return true; });
      text.finish();  // appends what it held back to text(): one call, then read (not both in one expression)
      const std::string out = text.text();
      const Finish f = r->finish_reason();
      if (f == Finish::Error) throw ApiError(500, "generation failed: " + r->error(), "server_error");
      const std::string finish = finish_name(f, text.stopped());
      json choice{{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", out}};
        if (job->params.top_logprobs >= 0) choice["logprobs"] = chat_logprobs(b, events, 0, events.size());
      } else {
        const std::string prefix = job->echo ? job->prompt_text : "";
        choice["text"] = prefix + out;
        if (job->params.top_logprobs >= 0) choice["logprobs"] = completion_logprobs(b, events, 0, events.size(), prefix.size());
      }
      json body = base(chat ? "chat.completion" : "text_completion");
      body["choices"] = json::array({choice});
      body["usage"] = usage(static_cast<int64_t>(events.size()));
      send_json(res, 200, body);
      return;
    }

    // Streaming: one event per token (text that became final, and its log-probabilities), then the finish.
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, r, job, base, usage, chat](size_t, httplib::DataSink& sink) {
          const Backend& b = backend_;
          auto send = [&](const json& j) {
            const std::string line = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          const char* object = chat ? "chat.completion.chunk" : "text_completion";
          // Chat streams open with the assistant's role and close with an empty delta beside the finish reason.
          auto chunk = [&](const std::string& delta, json logprobs, json finish, bool opening = false) {
            json c = base(object);
            json choice{{"index", 0}, {"finish_reason", finish}, {"logprobs", logprobs}};
            if (chat) choice["delta"] = opening ? json{{"role", "assistant"}, {"content", ""}}
                                        : finish.is_null() ? json{{"content", delta}}
                                                           : json::object();
            else choice["text"] = delta;
            c["choices"] = json::array({choice});
            return c;
          };
          bool ok = true;
          if (chat) ok = send(chunk("", nullptr, nullptr, /*opening=*/true));
          else if (job->echo) ok = send(chunk(job->prompt_text, nullptr, nullptr));
          TextStream text(*b.tokenizer, job->stop, b.model->config().eos_token_ids);
          std::vector<TokenEvent> events;
          size_t offset = job->echo ? job->prompt_text.size() : 0;
          ok = ok && pull_tokens(*r, text, events, [&](const std::string& delta) {
                 json lp = nullptr;
                 if (job->params.top_logprobs >= 0) {
                   const size_t i = events.size() - 1;
                   lp = chat ? chat_logprobs(b, events, i, i + 1) : completion_logprobs(b, events, i, i + 1, offset);
                   offset += token_text(b, events.back().id).size();
                 }
                 return delta.empty() && lp.is_null() ? true : send(chunk(delta, lp, nullptr));
               });
          if (!ok) {  // the client went away: end its sequence, which returns its blocks
            r->cancel = true;
            return false;
          }
          const std::string rest = text.finish();
          if (!rest.empty()) ok = send(chunk(rest, nullptr, nullptr));
          const Finish f = r->finish_reason();
          if (ok && f == Finish::Error) {
            ok = send(error_body("generation failed: " + r->error(), "server_error", "", ""));
          } else if (ok) {
            json last = chunk("", nullptr, finish_name(f, text.stopped()));
            last["usage"] = usage(static_cast<int64_t>(events.size()));
            ok = send(last);
          }
          if (ok) {
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
          }
          return ok;
        },
        [r](bool) { r->cancel = true; });  // a stream torn down for any reason ends its sequence
  };

  s.Post("/v1/completions", [generate](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); });
  s.Post("/v1/chat/completions",
         [generate](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); });
}

}  // namespace mha2mla::serve
