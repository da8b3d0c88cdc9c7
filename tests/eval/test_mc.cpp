// Multiple choice: the harness's boundary rule, the three normalisations, batching with left padding, and
// `mha2mla eval` against an independent PyTorch computation of the same log-likelihoods.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "eval/multiple_choice.h"
#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
using nlohmann::json;

namespace {

tok::Tokenizer byte_tokenizer(const std::string& dir) {
  testutil::write_file(dir + "/tokenizer.json", testutil::byte_level_tokenizer_json().dump());
  return tok::Tokenizer::load(dir);
}

// Weights from a fixed formula (no random generator), so the stored reference values stay valid on any
// libtorch: every parameter is a scaled sine of its index, norms around 1.
model::Transformer formula_model(const json& cfg_json) {
  auto cfg = io::ModelConfig::from_json(cfg_json, "test config");
  model::Transformer m(cfg, torch::kFloat32);
  torch::NoGradGuard ng;
  int64_t k = 0;
  for (auto& kv : m->named_parameters()) {
    auto& p = kv.value();
    auto i = torch::arange(p.numel(), torch::kFloat64);
    auto w = torch::sin(i * 0.7317 + 1.37 * static_cast<double>(++k) + 0.5);
    const bool norm = p.dim() == 1 && kv.key().find("norm") != std::string::npos;
    const double scale = p.dim() == 2 ? 1.2 / std::sqrt(static_cast<double>(p.size(1))) : 0.1;
    p.copy_(((norm ? 1.0 : 0.0) + scale * w).to(torch::kFloat32).view(p.sizes()));
  }
  return m;
}

}  // namespace

TEST(EncodePair, TrailingSpaceMovesToTheContinuation) {
  auto dir = testutil::temp_dir("encode-pair");
  auto tok = byte_tokenizer(dir);
  // " the" is one pre-token that BPE merges to [" th", "e"]: the space must travel with the continuation.
  auto r = eval::encode_pair(tok, "Question: x\nAnswer: ", "the", 0);
  auto ctx = tok.encode("Question: x\nAnswer:", true);
  EXPECT_EQ(r.context, std::vector<int64_t>(ctx.begin(), ctx.end()));
  EXPECT_EQ(r.continuation, (std::vector<int64_t>{*tok.token_to_id(testutil::byte_char(' ') + "th"), 'e' + 1}));
  // The continuation is the ids past the encoded context, not the continuation encoded alone: "xt" + "h y"
  // encodes as [x, th, " ", y], so the continuation is [" ", y] (alone, "h y" would be [h, " ", y]).
  auto s = eval::encode_pair(tok, "xt", "h y", 0);
  EXPECT_EQ(s.context, (std::vector<int64_t>{'x' + 1, 't' + 1}));
  EXPECT_EQ(s.continuation, (std::vector<int64_t>{' ' + 1, 'y' + 1}));
  // Empty context: the prefix token stands in.
  auto e = eval::encode_pair(tok, "", "ab", 7);
  EXPECT_EQ(e.context, std::vector<int64_t>{7});
  EXPECT_EQ(e.continuation, (std::vector<int64_t>{'a' + 1, 'b' + 1}));
  // A merge that swallows the whole continuation: "i" + "n" encodes as ["in"], one token like the context, so
  // "n" is encoded on its own.
  auto w = eval::encode_pair(tok, "i", "n", 0);
  EXPECT_EQ(w.continuation, (std::vector<int64_t>{'n' + 1}));
  std::filesystem::remove_all(dir);
}

TEST(ScoreChoices, ThreeNormalisationsByHand) {
  eval::McSample s;
  s.choices = {" a", "bb", " cccc"};  // characters 2, 2, 5; without the leading space 1, 2, 4
  s.gold = 2;
  auto r = eval::score_choices(s, {-0.9, -0.8, -1.9});
  EXPECT_EQ(r.pred, 1);               // -0.9, -0.8, -1.9
  EXPECT_EQ(r.pred_norm, 2);          // -0.45, -0.40, -0.38
  EXPECT_EQ(r.pred_norm_nospace, 1);  // -0.90, -0.40, -0.475
  // Ties go to the first choice, as numpy's argmax.
  EXPECT_EQ(eval::score_choices(s, {-1.0, -1.0, -5.0}).pred, 0);
  EXPECT_EQ(eval::char_length(" café"), 5);
  auto ms = eval::mean_stderr({1, 0, 1, 1});  // mean 0.75, sample sd sqrt(0.25), / sqrt(4)
  EXPECT_DOUBLE_EQ(ms.mean, 0.75);
  EXPECT_NEAR(ms.stderr_, 0.25, 1e-12);
}

TEST(Fewshot, SolvedShotsBeforeTheQuery) {
  std::vector<eval::McSample> all{{"Q0", {" a", " b"}, 1}, {"Q1", {" c", " d"}, 0}, {"Q2", {" e"}, 0}};
  EXPECT_EQ(eval::fewshot_query(all, 0, 0), "Q0");
  auto q = eval::fewshot_query(all, 2, 2);
  EXPECT_TRUE(q == "Q0 b\n\nQ1 c\n\nQ2" || q == "Q1 c\n\nQ0 b\n\nQ2") << q;
  EXPECT_EQ(q, eval::fewshot_query(all, 2, 2));  // reproducible
  testutil::expect_error([&] { eval::fewshot_query(all, 0, 3); }, "--fewshot 3");
}

class McOracle : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testutil::temp_dir("mc-oracle");
    auto cfg = testutil::tiny_config("llama-gqa");
    cfg["vocab_size"] = 262;
    cfg["bos_token_id"] = 0;
    cfg["eos_token_id"] = 0;
    auto m = formula_model(cfg);
    model::save_model(*m, dir_);
    byte_tokenizer(dir_);
    // Rows of different lengths (so batches pad), a trailing-space query, non-ASCII text, and one query longer
    // than --max-length (so it is cut from the left).
    std::string long_q;
    for (int i = 0; i < 12; ++i) long_q += "and the thread ran on ";
    std::ofstream f(dir_ + "/rows.jsonl");
    f << json{{"query", "Question: which is warm?\nAnswer:"}, {"choices", {" the sun", " ice", " snow in winter"}}, {"gold_index", 0}}.dump() << "\n"
      << json{{"query", "The jar broke because "}, {"choices", {"the jar was thin.", "the shelf was thin."}}, {"gold_index", 0}}.dump() << "\n"
      << "\n"  // blank lines are skipped
      << json{{"query", "Café au lait, crème"}, {"choices", {" brûlée", " thin"}}, {"gold_index", 1}}.dump() << "\n"
      << json{{"query", long_q}, {"choices", {" forever", " in the end"}}, {"gold_index", 1}}.dump() << "\n"
      << json{{"query", "a"}, {"choices", {"n", "b", " ant"}}, {"gold_index", 2}}.dump() << "\n";
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  // The requests eval builds for rows.jsonl, for the oracle.
  static json requests() {
    auto tok = tok::Tokenizer::load(dir_);
    json reqs = json::array();
    std::ifstream f(dir_ + "/rows.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      auto row = json::parse(line);
      for (const auto& c : row["choices"]) {
        auto r = eval::encode_pair(tok, row["query"].get<std::string>(), c.get<std::string>(), 0);
        reqs.push_back({{"context", r.context}, {"continuation", r.continuation}});
      }
    }
    return reqs;
  }

  static std::vector<double> ours(const std::string& extra) {
    auto r = testutil::run_cli("eval --task mc --model " + dir_ + " --data " + dir_ + "/rows.jsonl --max-length 48 --out " +
                               dir_ + "/out.jsonl --json " + extra);
    EXPECT_EQ(r.code, 0) << r.err;
    auto j = json::parse(r.out);
    EXPECT_EQ(j["samples"], 5);
    EXPECT_EQ(j["task"], "mc");
    std::vector<double> ll;
    std::ifstream f(dir_ + "/out.jsonl");
    std::string line;
    int n = 0;
    double acc = 0;
    while (std::getline(f, line)) {
      auto s = json::parse(line);
      for (double x : s["loglik"]) ll.push_back(x);
      acc += s["pred"] == s["gold"];
      ++n;
    }
    EXPECT_EQ(n, 5);
    EXPECT_NEAR(j["metrics"]["acc"].get<double>(), acc / n, 1e-12);
    EXPECT_TRUE(j["metrics"].contains("acc_norm_nospace_stderr"));
    return ll;
  }

  static std::string dir_;
};
std::string McOracle::dir_;

TEST_F(McOracle, MatchesStoredPyTorchValues) {
  // tests/eval/data/mc_loglik_ref.json: loglik_ref.py's output for these rows and this formula model.
  std::ifstream f(MHA2MLA_SOURCE_DIR "/tests/eval/data/mc_loglik_ref.json");
  ASSERT_TRUE(f.good()) << "stored reference missing";
  auto ref = json::parse(f);
  EXPECT_EQ(ref["requests"], requests()) << "the stored reference was made for other token ids";
  for (const char* extra : {"--batch 3", "--batch 1", "--batch 64"}) {
    auto ll = ours(extra);
    ASSERT_EQ(ll.size(), ref["loglik"].size());
    for (size_t i = 0; i < ll.size(); ++i) EXPECT_NEAR(ll[i], ref["loglik"][i].get<double>(), 2e-4) << extra << " #" << i;
  }
}

TEST_F(McOracle, MatchesLivePyTorch) {
  if (!testutil::python_has_torch()) GTEST_SKIP() << "Debian python3 with torch not found";
  json spec{{"max_length", 48}, {"requests", requests()}};
  testutil::write_file(dir_ + "/req.json", spec.dump());
  std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/loglik_ref.py " + dir_ + " " +
                    dir_ + "/req.json > " + dir_ + "/ref.json";
  ASSERT_EQ(testutil::run(cmd), 0);
  auto ref = json::parse(testutil::slurp(dir_ + "/ref.json"));
  auto ll = ours("--batch 3");
  ASSERT_EQ(ll.size(), ref.size());
  for (size_t i = 0; i < ll.size(); ++i) EXPECT_NEAR(ll[i], ref[i].get<double>(), 2e-4) << "#" << i;
  if (std::getenv("MHA2MLA_UPDATE_REFS"))
    testutil::write_file(MHA2MLA_SOURCE_DIR "/tests/eval/data/mc_loglik_ref.json",
                         json{{"requests", spec["requests"]}, {"loglik", ref}}.dump(1) + "\n");
}

TEST_F(McOracle, TwoProcessesGiveTheSameTotals) {
  auto one = ours("--batch 2");
  auto two = ours("--batch 2 --nproc 2");
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(one[i], two[i], 1e-5) << "#" << i;
}

TEST_F(McOracle, BadInputGivesOneLineErrors) {
  testutil::write_file(dir_ + "/bad.jsonl", "{\"query\": \"q\", \"choices\": [\" a\"], \"gold_index\": 0}\n{oops\n");
  testutil::expect_one_line_error(testutil::run_cli("eval --task mc --model " + dir_ + " --data " + dir_ + "/bad.jsonl"),
                                  "bad.jsonl:2");
  testutil::write_file(dir_ + "/bad2.jsonl", "{\"query\": \"q\", \"choices\": [\" a\"]}\n");
  testutil::expect_one_line_error(testutil::run_cli("eval --task mc --model " + dir_ + " --data " + dir_ + "/bad2.jsonl"),
                                  "bad2.jsonl:1: missing field \"gold_index\"");
  testutil::expect_one_line_error(testutil::run_cli("eval --task nope --model " + dir_ + " --data x"), "unknown task");
  testutil::expect_one_line_error(testutil::run_cli("eval --task mc --model " + dir_ + " --data /nonexistent.jsonl"),
                                  "/nonexistent.jsonl");
  testutil::expect_one_line_error(
      testutil::run_cli("eval --task mc --model " + dir_ + " --data " + dir_ + "/rows.jsonl --max-length 4096"),
      "max_position_embeddings");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/never.jsonl"));
  auto h = testutil::run_cli("eval --help");
  EXPECT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("usage: mha2mla eval"), std::string::npos);
}
