// `mha2mla eval --task longbench`: scoring given predictions (values by hand), and generation on a tiny model.
#include <gtest/gtest.h>

#include <fstream>

#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/files.h"
#include "testing/tiny_model.h"

using namespace mha2mla;
using nlohmann::json;

namespace {

json row(const std::string& id, const std::string& dataset, std::vector<std::string> answers, int64_t length,
         std::vector<std::string> classes = {}) {
  return {{"_id", id}, {"dataset", dataset}, {"input", "question " + id}, {"context", "some context"},
          {"answers", answers}, {"length", length}, {"all_classes", classes.empty() ? json(nullptr) : json(classes)}};
}

}  // namespace

TEST(LongBenchCli, ScoresGivenPredictionsAsEvalPy) {
  auto dir = testutil::temp_dir("lb-pred");
  std::ofstream(dir + "/data.jsonl") << row("a", "hotpotqa", {"Paris"}, 100).dump() << "\n"
                                     << row("b", "hotpotqa", {"eiffel tower", "the tower"}, 200).dump() << "\n"
                                     << row("c", "passage_retrieval_en", {"Paragraph 3"}, 5000).dump() << "\n"
                                     << row("d", "trec", {"Person"}, 9000, {"Location", "Person"}).dump() << "\n";
  std::ofstream(dir + "/pred.jsonl") << json{{"_id", "d"}, {"pred", "\nPerson\nLocation"}}.dump() << "\n"
                                     << json{{"_id", "a"}, {"pred", "Paris"}}.dump() << "\n"
                                     << json{{"_id", "b"}, {"pred", "The Eiffel Tower, Paris."}}.dump() << "\n"
                                     << json{{"_id", "c"}, {"pred", "Paragraph 3 or 4"}}.dump() << "\n";
  auto r = testutil::run_cli("eval --task longbench --data " + dir + "/data.jsonl --predictions " + dir +
                             "/pred.jsonl --json --out " + dir + "/scored.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  // hotpotqa: 1.0 and F1 0.8 (P 2/3, R 1) -> 90; retrieval: one of two numbers right -> 50; trec: first line
  // "Person" is the only class found -> 100. Average over datasets 80; over samples (100+80+50+100)/4.
  EXPECT_NEAR(j["datasets"]["hotpotqa"]["score"].get<double>(), 90.0, 1e-9);
  EXPECT_NEAR(j["datasets"]["passage_retrieval_en"]["score"].get<double>(), 50.0, 1e-9);
  EXPECT_NEAR(j["datasets"]["trec"]["score"].get<double>(), 100.0, 1e-9);
  EXPECT_NEAR(j["metrics"]["average"].get<double>(), 80.0, 1e-9);
  EXPECT_NEAR(j["metrics"]["score"].get<double>(), 82.5, 1e-9);
  EXPECT_TRUE(j["metrics"].contains("score_stderr"));
  EXPECT_NEAR(j["datasets"]["passage_retrieval_en"]["buckets"]["4-8k"]["score"].get<double>(), 50.0, 1e-9);
  EXPECT_NEAR(j["datasets"]["trec"]["buckets"]["8k+"]["score"].get<double>(), 100.0, 1e-9);
  EXPECT_EQ(j["samples"], 4);
  auto lines = testutil::slurp(dir + "/scored.jsonl");
  auto first = json::parse(lines.substr(0, lines.find('\n')));
  EXPECT_EQ(first["_id"], "a");
  EXPECT_EQ(first["pred"], "Paris");
  EXPECT_EQ(first["score"], 1.0);
  EXPECT_EQ(first["answers"], json({"Paris"}));

  // A row without a prediction, and a bad dataset name, are one-line errors naming the place.
  std::ofstream(dir + "/pred2.jsonl") << json{{"_id", "a"}, {"pred", "x"}}.dump() << "\n";
  testutil::expect_one_line_error(testutil::run_cli("eval --task longbench --data " + dir + "/data.jsonl --predictions " +
                                                    dir + "/pred2.jsonl"),
                                  "no prediction for _id \"b\"");
  std::ofstream(dir + "/bad.jsonl") << row("z", "dureader", {"x"}, 1).dump() << "\n";
  testutil::expect_one_line_error(testutil::run_cli("eval --task longbench --data " + dir + "/bad.jsonl --predictions " +
                                                    dir + "/pred2.jsonl"),
                                  "bad.jsonl:1: unknown LongBench dataset \"dureader\"");
  std::filesystem::remove_all(dir);
}

TEST(LongBenchCli, GeneratesGreedilyWithMiddleTruncation) {
  auto dir = testutil::temp_dir("lb-gen");
  auto cfg = testutil::tiny_config("llama-mha");
  cfg["vocab_size"] = 262;
  cfg["bos_token_id"] = 0;
  cfg["eos_token_id"] = 0;
  auto m = testutil::make_random_model(cfg, 5);
  model::save_model(*m, dir);
  testutil::write_file(dir + "/tokenizer.json", testutil::byte_level_tokenizer_json().dump());
  std::string long_ctx;
  for (int i = 0; i < 40; ++i) long_ctx += "Paragraph " + std::to_string(i) + ": the thin thread. ";
  json short_row{{"_id", "s"}, {"dataset", "kjv_retrieval"}, {"context", "Paragraph 1: in the thin air.\n"},
                 {"input", "Which paragraph? Paragraph"}, {"answers", {"Paragraph 1"}}, {"length", 10}};
  json long_row = short_row;
  long_row["_id"] = "l";
  long_row["context"] = long_ctx;
  std::ofstream(dir + "/data.jsonl") << short_row.dump() << "\n" << long_row.dump() << "\n";
  auto r = testutil::run_cli("eval --task longbench --model " + dir + " --data " + dir + "/data.jsonl --json --batch 2 --out " +
                             dir + "/out.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["samples"], 2);
  EXPECT_EQ(j["truncated"], 1);  // the long row exceeds max_position_embeddings (128) - 4 new tokens
  // The short row's prediction is what `generate` makes of the same prompt, batched or not.
  auto out = testutil::slurp(dir + "/out.jsonl");
  auto pred = json::parse(out.substr(0, out.find('\n')));
  ASSERT_EQ(pred["_id"], "s");
  auto g = testutil::run_cli("generate --json --max-new 4 --model " + dir + " --prompt '" +
                             short_row["context"].get<std::string>() + short_row["input"].get<std::string>() + "'");
  ASSERT_EQ(g.code, 0) << g.err;
  EXPECT_EQ(pred["pred"], json::parse(g.out)["text"]);
  std::filesystem::remove_all(dir);
}
