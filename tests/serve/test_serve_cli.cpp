// `mha2mla serve` as a user runs it: the official OpenAI Node client against it (the oracle installed by
// scripts/setup.sh), then SIGTERM during a stream: the stream finishes and the server exits 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <thread>

#include "serve/chat_template.h"
#include "serve/server_fixture.h"
#include "testing/files.h"
#include "tokenizer/npm_oracle.h"

using namespace mha2mla;
using json = nlohmann::json;

extern char** environ;

namespace {

// `mha2mla serve` over a copy of kjv-mha that names the ChatML template, on a free port; stderr to a file.
struct ServeProcess {
  pid_t pid = -1;
  int port = 0;
  std::string dir, err;
  explicit ServeProcess(const std::string& tag) {
    dir = testutil::temp_dir(tag);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
      std::filesystem::create_symlink(testutil::kjv_dir() + "/" + f, dir + "/" + f);
    testutil::write_file(dir + "/tokenizer_config.json",
                         R"({"chat_template": "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"})");
    err = dir + "/stderr.txt";
    const std::string port_file = dir + "/port";
    std::vector<std::string> args = {MHA2MLA_CLI, "serve", "--model", dir, "--port", "0", "--port-file", port_file,
                                     "--alias", "kjv-mha", "--api-key", "sekrit", "--cache-memory", "256M"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(posix_spawn(&pid, MHA2MLA_CLI, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 600 && port == 0; ++i) {  // up to a minute to start
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const std::string p = testutil::slurp(port_file);
      if (!p.empty()) port = std::stoi(p);
    }
    EXPECT_GT(port, 0) << testutil::slurp(err);
    httplib::Client c("127.0.0.1", port);
    for (int i = 0; i < 600; ++i) {  // /health answers 503 while the model loads
      auto r = c.Get("/health");
      if (r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  int stop(int sig) {
    if (pid <= 0) return -1;
    kill(pid, sig);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~ServeProcess() { stop(SIGKILL); }
};

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  pclose(p);
  return out;
}

}  // namespace

TEST(ServeCli, OfficialOpenAiNodeClient) {
  const std::string prefix = oracle::npm_prefix();
  if (!oracle::exists(prefix + "/node_modules/openai/index.mjs") || std::system("node --version >/dev/null 2>&1") != 0) {
    if (testutil::under_ci()) FAIL() << "node or the openai package is missing (scripts/setup.sh installs them)";
    GTEST_SKIP() << "node or the openai npm package is missing: run scripts/setup.sh";
  }
  ServeProcess s("serve_openai");
  ASSERT_GT(s.port, 0);
  const std::string out = run("node " + std::string(MHA2MLA_SOURCE_DIR) + "/tests/serve/openai_client.mjs http://127.0.0.1:" +
                              std::to_string(s.port) + " sekrit " + prefix + " 2>&1");
  const json j = json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  const auto want = testutil::generate_greedy("In the beginning", 16);
  EXPECT_EQ(j["completion"], want.first);
  EXPECT_EQ(j["streamed"], want.first);
  EXPECT_EQ(j["usage"]["completion_tokens"], want.second);
  const auto chat_ids = testutil::Loaded::get().tokenizer.encode(
      serve::render_chat(serve::ChatFormat::ChatML, {{"user", "Who is my shepherd?"}}), false);
  const auto chat_want = testutil::greedy_after(std::vector<int64_t>(chat_ids.begin(), chat_ids.end()), 8).first;
  EXPECT_EQ(j["chat"], chat_want);
  EXPECT_EQ(j["chat_streamed"], chat_want);
  EXPECT_EQ(j["models"], json::array({"kjv-mha"}));
  EXPECT_EQ(j["bad_request"], 400);
  EXPECT_EQ(j["wrong_key"], 401);
  EXPECT_EQ(s.stop(SIGTERM), 0) << testutil::slurp(s.err);
}

TEST(ServeCli, SigtermLetsTheRunningStreamFinishAndExitsZero) {
  ServeProcess s("serve_sigterm");
  ASSERT_GT(s.port, 0);
  std::string body;
  std::atomic<bool> started{false};
  std::thread client([&] {
    httplib::Client c("127.0.0.1", s.port);
    c.set_read_timeout(120, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Authorization", "Bearer sekrit");
    req.set_header("Content-Type", "application/json");
    req.body = json{{"prompt", "And it came to pass"}, {"max_tokens", 200}, {"temperature", 0}, {"stream", true}}.dump();
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      body.append(d, n);
      started = true;
      return true;
    };
    c.send(req);
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const int code = s.stop(SIGTERM);
  client.join();
  EXPECT_EQ(code, 0) << testutil::slurp(s.err);
  EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos) << body.substr(body.size() > 400 ? body.size() - 400 : 0);
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(testutil::slurp(s.err).find("SIGTERM"), std::string::npos);
}
