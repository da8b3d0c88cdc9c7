// mha2mla generate as a user reads it: why generation stopped, what the cache holds, and the statistics on a
// line of their own.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

using testutil::run_cli;

class Generate : public ::testing::Test {
 protected:
  // A tiny model (128 positions) with a byte-level tokenizer: one token per prompt byte.
  static void SetUpTestSuite() {
    dir_ = testutil::temp_dir("generate-model");
    cfg_ = testutil::tiny_config("llama-gqa");
    cfg_["vocab_size"] = 262;
    cfg_["bos_token_id"] = 0;
    cfg_["eos_token_id"] = 0;
    model::save_model(*testutil::make_random_model(cfg_, 21), dir_);
    std::ofstream(dir_ + "/tokenizer.json") << testutil::byte_level_tokenizer_json().dump();
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static nlohmann::json run_json(const std::string& args) {
    auto r = run_cli("generate --json " + args);
    EXPECT_EQ(r.code, 0) << r.err;
    return nlohmann::json::parse(r.out);
  }
  static std::string dir_;
  static nlohmann::json cfg_;
};
std::string Generate::dir_;
nlohmann::json Generate::cfg_;

// Each of the three ways generation ends is named in --json and on the statistics line.
TEST_F(Generate, SaysWhyItStopped) {
  // --max-new: the greedy continuation of this prompt has no EOS in its first 5 tokens.
  auto j = run_json("--model " + dir_ + " --prompt 'the thread' --max-new 5");
  ASSERT_EQ(j["new_tokens"], 5) << j.dump();
  EXPECT_EQ(j["stop_reason"], "max_new");
  auto plain = run_cli("generate --model " + dir_ + " --prompt 'the thread' --max-new 5");
  EXPECT_NE(plain.err.find("stopped at --max-new 5"), std::string::npos) << plain.err;

  // EOS: the same model with its first greedy token declared EOS stops right there.
  const std::string eos_dir = testutil::temp_dir("generate-eos");
  fs::copy(dir_, eos_dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  auto cfg = nlohmann::json::parse(std::ifstream(dir_ + "/config.json"));
  cfg["eos_token_id"] = j["tokens"][0];
  std::ofstream(eos_dir + "/config.json") << cfg.dump();
  auto e = run_json("--model " + eos_dir + " --prompt 'the thread' --max-new 5");
  EXPECT_EQ(e["new_tokens"], 1);
  EXPECT_EQ(e["stop_reason"], "eos");
  auto eplain = run_cli("generate --model " + eos_dir + " --prompt 'the thread' --max-new 5");
  EXPECT_NE(eplain.err.find("stopped at EOS"), std::string::npos) << eplain.err;
  fs::remove_all(eos_dir);

  // The position limit: 124 prompt bytes (no BOS with this tokenizer) leave 128 - 124 = 4 positions, so 5 new
  // tokens (the last is never fed back), far fewer than --max-new 100.
  const std::string prompt(124, 'a');
  auto c = run_json("--model " + dir_ + " --prompt " + prompt + " --max-new 100");
  ASSERT_EQ(c["prompt_tokens"], 124);
  EXPECT_EQ(c["new_tokens"], 5);
  EXPECT_EQ(c["stop_reason"], "context_limit");
  auto cplain = run_cli("generate --model " + dir_ + " --prompt " + prompt + " --max-new 100");
  EXPECT_NE(cplain.err.find("stopped at the context limit (max_position_embeddings 128)"), std::string::npos)
      << cplain.err;
}

// stdout and stderr in one pipe (a terminal, `2>&1 | less`): the generated text ends its line before the
// statistics start theirs.
TEST_F(Generate, StatisticsStartALineOfTheirOwn) {
  const std::string cmd = std::string(MHA2MLA_CLI) + " generate --model " + dir_ + " --prompt 'the thread' --max-new 8 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  ASSERT_EQ(WEXITSTATUS(pclose(p)), 0) << out;
  ASSERT_FALSE(out.empty());
  ASSERT_EQ(out.back(), '\n');
  const size_t last = out.rfind('\n', out.size() - 2);
  ASSERT_NE(last, std::string::npos) << out;
  const std::string stats = out.substr(last + 1);
  EXPECT_EQ(stats.front(), '[') << out;
  EXPECT_EQ(stats.substr(stats.size() - 2), "]\n") << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '['), 1) << out;  // and nowhere else
}

// The cache line says what it counts, and with an integer cache how many tokens are quantized and how many
// still sit in the full-precision residual (why a short run saves nothing).
TEST_F(Generate, CacheLineCountsQuantizedAndResidualTokens) {
  const std::string args = "--model " + dir_ + " --prompt 'the thread and the needle' --max-new 40 ";
  const std::string q = "--cache-type int4 --cache-residual 16 --cache-group 16";
  auto j = run_json(args + q);
  const int64_t tokens = j["cache_tokens"], res = j["cache_residual_tokens"];
  ASSERT_EQ(tokens, j["prompt_tokens"].get<int64_t>() + j["new_tokens"].get<int64_t>() - 1);
  ASSERT_GT(tokens - res, 0);
  auto plain = run_cli("generate " + args + q);
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_NE(plain.err.find("holds " + std::to_string(tokens) + " tokens (the prompt and every new token but the last): " +
                           std::to_string(tokens - res) + " in int4, the newest " + std::to_string(res) + " in f32"),
            std::string::npos)
      << plain.err;
  // Fewer tokens than the default residual of 128: nothing is quantized yet, and the line says so.
  auto short_run = run_cli("generate " + args + "--cache-type int4");
  ASSERT_EQ(short_run.code, 0) << short_run.err;
  EXPECT_NE(short_run.err.find("all in f32: int4 begins only past the newest 128 (--cache-residual)"), std::string::npos)
      << short_run.err;
  // A float cache has no such split.
  auto f = run_cli("generate " + args);
  EXPECT_EQ(f.err.find("int4"), std::string::npos) << f.err;
  EXPECT_NE(f.err.find("holds " + std::to_string(tokens) + " tokens"), std::string::npos) << f.err;
}

// --json says what ran: a float cache in the compute dtype decodes through the fused step, a quantized one layer by
// layer with the reason; the attention kernel is named.
TEST_F(Generate, JsonSaysWhichPathsRan) {
  const std::string args = "--model " + dir_ + " --prompt 'the thread' --max-new 12 ";
  auto fused = run_json(args);
  EXPECT_EQ(fused["execution"]["decode_steps_fused"].get<int64_t>(), 11) << fused.dump();
  EXPECT_EQ(fused["execution"]["decode_steps_layers"].get<int64_t>(), 0);
  EXPECT_EQ(fused["runtime"]["plan"]["attention"], "cpu " + fused["runtime"]["kernels"].get<std::string>());
  auto q = run_json(args + "--cache-type fp8 --cache-residual 0 --cache-axis k=token");
  EXPECT_EQ(q["execution"]["decode_steps_fused"].get<int64_t>(), 0);
  EXPECT_EQ(q["execution"]["decode_steps_layers"].get<int64_t>(), 11);
  EXPECT_EQ(q["execution"]["layers_because"], "the cache is not stored in the compute dtype");
  EXPECT_EQ(q["execution"]["attention"], "cpu");  // the FP8 codes read in place by the CPU kernels
  auto l = run_json(args + "--decode-step layers");
  EXPECT_EQ(l["execution"]["layers_because"], "--decode-step layers");
  // fp8-flashmla is for MLA caches: on this GQA model, one clear error.
  testutil::expect_one_line_error(run_cli("generate " + args + "--cache-type fp8-flashmla"),
                                  "fp8-flashmla stores MLA caches only");
}

// The key list in --help is the one the JSON has.
std::set<std::string> help_keys(const std::string& help, const std::string& after) {
  const size_t at = help.find(after);
  EXPECT_NE(at, std::string::npos) << help;
  const size_t open = help.find('{', at), close = help.find('}', open);
  const std::string list = help.substr(open + 1, close - open - 1);
  std::set<std::string> keys;
  static const std::set<std::string> words{"and", "with", "a", "cache"};
  std::regex id("[a-z_]+");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), id); it != std::sregex_iterator(); ++it)
    if (!words.count(it->str())) keys.insert(it->str());
  return keys;
}

std::set<std::string> json_keys(const nlohmann::json& j) {
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  return keys;
}

TEST_F(Generate, HelpListsTheJsonKeysItPrints) {
  auto h = run_cli("generate --help");
  ASSERT_EQ(h.code, 0);
  EXPECT_EQ(help_keys(h.out, "--json"), json_keys(run_json("--model " + dir_ + " --prompt hi --max-new 2")));
  auto ph = run_cli("ppl --help");
  ASSERT_EQ(ph.code, 0);
  auto p = run_cli("ppl --json --model " + dir_ + " --text " + dir_ + "/config.json --ctx 32 --cache-type int8");
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_EQ(help_keys(ph.out, "--json"), json_keys(nlohmann::json::parse(p.out)));
}

}  // namespace
