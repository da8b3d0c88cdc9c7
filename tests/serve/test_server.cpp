// The HTTP server against the engine it serves: greedy completions equal `generate`, batch invariance, streaming,
// block accounting and cancellation, queue limits, every bad input of the API, API keys and draining.
#include <gtest/gtest.h>

#include <thread>

#include "serve/server_fixture.h"

using namespace mha2mla;
using json = nlohmann::json;
using testutil::Loaded;
using testutil::TestServer;
using testutil::generate_greedy;

namespace {

json completion(const std::string& prompt, int max_tokens, int logprobs = -1) {
  json j{{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
  if (logprobs >= 0) j["logprobs"] = logprobs;
  return j;
}

// The data: lines of a Server-Sent Events body.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while ((p = body.find("data: ", p)) != std::string::npos) {
    const size_t e = body.find("\n\n", p);
    out.push_back(body.substr(p + 6, e - p - 6));
    p = e;
  }
  return out;
}

const std::vector<std::string> kPrompts = {
    "In the beginning",       "And God said",          "The LORD is my shepherd", "Blessed are the meek",
    "And it came to pass",    "Jesus wept",            "Let there be light",      "For God so loved the world",
    "Thou shalt not",         "And Adam knew Eve",     "Vanity of vanities",      "Honour thy father",
    "The heavens declare",    "I am the way",          "In my Father's house",    "And the earth was"};

}  // namespace

TEST(Server, HealthModelsAndTokenize) {
  TestServer ts;
  auto c = ts.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(json::parse(m->body)["data"][0]["id"], "kjv-mha");
  auto [st, tokens] = ts.post("/tokenize", R"({"content": "In the beginning God"})");
  EXPECT_EQ(st, 200);
  const auto want = Loaded::get().tokenizer.encode("In the beginning God", false);
  EXPECT_EQ(tokens["tokens"].get<std::vector<int32_t>>(), want);
  auto [st2, text] = ts.post("/detokenize", json{{"tokens", want}}.dump());
  EXPECT_EQ(st2, 200);
  EXPECT_EQ(text["content"], "In the beginning God");
}

TEST(Server, GreedyCompletionEqualsGenerate) {
  TestServer ts;
  for (const auto& p : {kPrompts[0], kPrompts[7]}) {
    auto [st, r] = ts.post("/v1/completions", completion(p, 24).dump());
    ASSERT_EQ(st, 200) << r.dump();
    const auto [want, n] = generate_greedy(p, 24);
    EXPECT_EQ(r["choices"][0]["text"], want) << p;
    EXPECT_EQ(r["usage"]["completion_tokens"], n);
    EXPECT_EQ(r["usage"]["prompt_tokens"], Loaded::get().tokenizer.encode(p, true).size());
    EXPECT_EQ(r["object"], "text_completion");
    EXPECT_EQ(r["choices"][0]["finish_reason"], n == 24 ? "length" : "stop");
  }
}

TEST(Server, BatchInvarianceSixteenConcurrentEqualEachAlone) {
  serve::EngineOptions eo;
  eo.parallel = 8;  // eight run, eight wait and join as others finish
  eo.prefill_chunk = 3;  // prompts are prefilled in several chunks interleaved with the others' decoding
  eo.block_tokens = 16;  // each sequence's cache spans several blocks of the pool
  TestServer ts(eo);
  std::vector<json> alone;
  for (const auto& p : kPrompts) {
    auto [st, r] = ts.post("/v1/completions", completion(p, 20, 3).dump());
    ASSERT_EQ(st, 200) << r.dump();
    alone.push_back(r["choices"][0]);
  }
  std::vector<json> together(kPrompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < kPrompts.size(); ++i)
    threads.emplace_back([&, i] { together[i] = ts.post("/v1/completions", completion(kPrompts[i], 20, 3).dump()).second; });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    // Tokens, log-probabilities and the top-3 alternatives, bit for bit (JSON prints floats exactly).
    EXPECT_EQ(together[i]["choices"][0], alone[i]) << kPrompts[i];
    EXPECT_FALSE(alone[i]["logprobs"]["token_logprobs"].empty());
  }
  EXPECT_EQ(ts.metric("mha2mla_cache_blocks_used"), 0);
  EXPECT_EQ(ts.metric("mha2mla_requests_completed_total"), 2.0 * kPrompts.size());
}

TEST(Server, StreamedTextEqualsTheWholeAnswer) {
  TestServer ts;
  auto [st, whole] = ts.post("/v1/completions", completion(kPrompts[2], 30, 1).dump());
  ASSERT_EQ(st, 200);
  json req = completion(kPrompts[2], 30, 1);
  req["stream"] = true;
  auto c = ts.client();
  auto r = c.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const auto events = sse_data(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::vector<double> lps;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto j = json::parse(events[i]);
    text += j["choices"][0]["text"].get<std::string>();
    if (j["choices"][0]["logprobs"].is_object())
      for (auto& x : j["choices"][0]["logprobs"]["token_logprobs"]) lps.push_back(x.get<double>());
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  EXPECT_EQ(lps, whole["choices"][0]["logprobs"]["token_logprobs"].get<std::vector<double>>());
  auto last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
  EXPECT_EQ(last["usage"], whole["usage"]);
}

TEST(Server, StopStringsEchoAndTokenIdPrompts) {
  TestServer ts;
  auto [st, full] = ts.post("/v1/completions", completion(kPrompts[0], 30).dump());
  ASSERT_EQ(st, 200);
  const std::string text = full["choices"][0]["text"];
  ASSERT_GT(text.size(), 12u);
  const std::string stop = text.substr(8, 4);
  json req = completion(kPrompts[0], 30);
  req["stop"] = {stop};
  auto [st2, cut] = ts.post("/v1/completions", req.dump());
  ASSERT_EQ(st2, 200);
  EXPECT_EQ(cut["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop");
  // A stop string whose start ends the text but never completes: the held-back tail comes back, once.
  req["stop"] = {text.substr(text.size() - 3) + "\x01zz"};
  auto [st4, whole] = ts.post("/v1/completions", req.dump());
  ASSERT_EQ(st4, 200);
  EXPECT_EQ(whole["choices"][0]["text"], text);
  // The prompt as token ids, echoed.
  const auto ids = Loaded::get().tokenizer.encode(kPrompts[0], true);
  auto [st3, echo] = ts.post("/v1/completions", json{{"prompt", ids}, {"max_tokens", 30}, {"temperature", 0}, {"echo", true}}.dump());
  ASSERT_EQ(st3, 200);
  EXPECT_EQ(echo["choices"][0]["text"], Loaded::get().tokenizer.decode(ids, false) + text);
}

TEST(Server, ChatRendersTheModelsFormat) {
  TestServer none;
  auto [st, err] = none.post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}]})");
  EXPECT_EQ(st, 400);
  EXPECT_NE(err["error"]["message"].get<std::string>().find("tokenizer_config.json"), std::string::npos);

  TestServer ts({}, {}, {serve::ChatFormat::ChatML, ""});
  const json msgs = json::array({{{"role", "user"}, {"content", "Who is the shepherd?"}}});
  auto [st2, r] = ts.post("/v1/chat/completions", json{{"messages", msgs}, {"max_tokens", 12}, {"temperature", 0}}.dump());
  ASSERT_EQ(st2, 200) << r.dump();
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  // The same as a completion of the rendered prompt, encoded without the tokenizer's own special tokens.
  const auto ids = Loaded::get().tokenizer.encode(serve::render_chat(serve::ChatFormat::ChatML, {{"user", "Who is the shepherd?"}}), false);
  auto [st3, c] = ts.post("/v1/completions", json{{"prompt", ids}, {"max_tokens", 12}, {"temperature", 0}}.dump());
  ASSERT_EQ(st3, 200);
  EXPECT_EQ(r["choices"][0]["message"]["content"], c["choices"][0]["text"]);
  EXPECT_EQ(r["usage"], c["usage"]);
}

TEST(Server, BadInputIsAJsonErrorAndTheServerKeepsServing) {
  TestServer ts;
  const int64_t ctx = Loaded::get().model->config().max_position_embeddings;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {R"([1, 2])", "JSON object"},
      {R"({"max_tokens": 5})", "'prompt' is required"},
      {R"({"prompt": 7})", "'prompt' must be"},
      {R"({"prompt": "a", "max_tokens": -1})", "'max_tokens' must be between"},
      {R"({"prompt": "a", "max_tokens": 1000000000000})", "'max_tokens' must be between"},
      {R"({"prompt": "a", "max_tokens": "5"})", "'max_tokens' must be an integer"},
      {R"({"prompt": "a", "temperature": "hot"})", "'temperature' must be a number"},
      {R"({"prompt": "a", "top_p": 0})", "'top_p'"},
      {R"({"prompt": "a", "stop": [1]})", "'stop'"},
      {R"({"prompt": [1, 99999]})", "outside the vocabulary"},
      {R"({"prompt": [1, -3]})", "outside the vocabulary"},
      {json{{"prompt", std::vector<int>(static_cast<size_t>(ctx), 5)}}.dump(), "context holds"},
      {R"({"prompt": "a", "model": "gpt-9"})", "not served here"},
      {R"({"prompt": "a", "n": 2})", "'n' must be"},
  };
  for (const auto& [body, needle] : cases) {
    auto [st, r] = ts.post("/v1/completions", body);
    EXPECT_EQ(st, 400) << body;
    ASSERT_TRUE(r.is_object() && r.contains("error")) << body;
    EXPECT_NE(r["error"]["message"].get<std::string>().find(needle), std::string::npos) << body << " -> " << r.dump();
    EXPECT_EQ(r["error"]["type"], "invalid_request_error");
  }
  auto c = ts.client();
  auto nf = c.Get("/v1/nothing");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_TRUE(json::parse(nf->body).contains("error"));
  // max_tokens beyond what the context leaves is capped, not refused.
  auto [st, r] = ts.post("/v1/completions", json{{"prompt", std::vector<int>(static_cast<size_t>(ctx - 2), 5)},
                                                  {"max_tokens", 50}, {"temperature", 0}}.dump());
  EXPECT_EQ(st, 200);
  EXPECT_LE(r["usage"]["completion_tokens"].get<int>(), 2);
  EXPECT_EQ(ts.post("/v1/completions", completion("a", 2).dump()).first, 200);
}

TEST(Server, ApiKeyAndBodyLimit) {
  serve::ServerOptions so;
  so.api_key = "sekrit";
  so.max_body = 1000;
  TestServer ts({}, so);
  auto c = ts.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);  // health needs no key
  EXPECT_EQ(ts.post("/v1/completions", completion("a", 2).dump()).first, 401);
  auto [st, r] = ts.post("/v1/completions", completion("a", 2).dump(), {{"Authorization", "Bearer wrong"}});
  EXPECT_EQ(st, 401);
  EXPECT_EQ(r["error"]["type"], "authentication_error");
  EXPECT_EQ(ts.post("/v1/completions", completion("a", 2).dump(), {{"Authorization", "Bearer sekrit"}}).first, 200);
  EXPECT_EQ(ts.post("/v1/completions", json{{"prompt", std::string(5000, 'a')}}.dump(), {{"Authorization", "Bearer sekrit"}}).first, 413);
}

TEST(Server, ClientThatDisconnectsMidStreamReturnsItsBlocks) {
  TestServer ts;
  json req = completion(kPrompts[1], 400);
  req["stream"] = true;
  int chunks = 0;
  ts.post_stream("/v1/completions", req.dump(), [&](const char*, size_t) { return ++chunks < 3; });  // hang up early
  EXPECT_GE(chunks, 1);
  // The engine ends the sequence at its next step and the pool gets its blocks back.
  for (int i = 0; i < 200 && ts.metric("mha2mla_cache_blocks_used") != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  EXPECT_EQ(ts.metric("mha2mla_cache_blocks_used"), 0);
  EXPECT_EQ(ts.metric("mha2mla_requests_cancelled_total"), 1);
  EXPECT_LT(ts.metric("mha2mla_generated_tokens_total"), 400);
  EXPECT_EQ(ts.post("/v1/completions", completion("a", 2).dump()).first, 200);
}

TEST(Server, FullQueueIs503WithRetryAfterAndOversizedRequestsAre400) {
  serve::EngineOptions eo;
  eo.parallel = 1;
  eo.max_queue = 1;
  eo.blocks = 16;
  eo.block_tokens = 64;
  TestServer ts(eo);
  // A holds the only slot (a long stream), B waits in the queue, C finds the queue full.
  json a = completion(kPrompts[0], 400);
  a["stream"] = true;
  std::atomic<bool> a_started{false}, a_hangup{false};
  std::thread ta([&] {
    ts.post_stream("/v1/completions", a.dump(), [&](const char*, size_t) {
      a_started = true;
      return !a_hangup.load();
    });
  });
  while (!a_started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::pair<int, json> b;
  std::thread tb([&] { b = ts.post("/v1/completions", completion(kPrompts[1], 4).dump()); });
  while (ts.metric("mha2mla_queue_length") < 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto c = ts.client();
  auto r = c.Post("/v1/completions", completion(kPrompts[2], 4).dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "server_error");
  a_hangup = true;
  ta.join();
  tb.join();
  EXPECT_EQ(b.first, 200);  // B ran once A left
  // 500 tokens are 8 blocks of the 16: they fit. More blocks than the whole pool holds: refused at once.
  EXPECT_EQ(ts.post("/v1/completions", json{{"prompt", std::vector<int>(300, 5)}, {"max_tokens", 200}}.dump()).first, 200);
  serve::EngineOptions tiny = eo;
  tiny.blocks = 2;
  TestServer small(tiny);
  auto [st2, r2] = small.post("/v1/completions", json{{"prompt", std::vector<int>(300, 5)}, {"max_tokens", 10}}.dump());
  EXPECT_EQ(st2, 400);
  EXPECT_NE(r2["error"]["message"].get<std::string>().find("cache blocks"), std::string::npos);
}

TEST(Server, DrainingFinishesRunningRequestsAndRefusesNewOnes) {
  TestServer ts;
  std::pair<int, json> a;
  std::thread ta([&] { a = ts.post("/v1/completions", completion(kPrompts[3], 40).dump()); });
  while (ts.metric("mha2mla_running_sequences") < 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread drain([&] { ts.engine->drain(std::chrono::seconds(60)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto [st, r] = ts.post("/v1/completions", completion("a", 2).dump());
  EXPECT_EQ(st, 503);
  ta.join();
  drain.join();
  EXPECT_EQ(a.first, 200);
  EXPECT_EQ(a.second["choices"][0]["text"], generate_greedy(kPrompts[3], 40).first);
}
