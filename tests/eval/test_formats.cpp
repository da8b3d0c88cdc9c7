// Each benchmark's row formatter on rows written here in the dataset's schema; expected strings follow the
// prompt functions of the lighteval task file (SmolLM's) used by the paper.
#include <gtest/gtest.h>

#include "eval/mc_formats.h"
#include "testing/files.h"

using namespace mha2mla::eval;
using nlohmann::json;

TEST(McFormats, Arc) {
  auto s = format_mc_row("arc", json::parse(R"({"id": "q1", "question": "Which tool cuts wood?",
      "choices": {"text": ["a saw", "a cup", "a sock"], "label": ["A", "B", "C"]}, "answerKey": "A"})"));
  EXPECT_EQ(s.query, "Question: Which tool cuts wood?\nAnswer:");
  EXPECT_EQ(s.choices, (std::vector<std::string>{" a saw", " a cup", " a sock"}));
  EXPECT_EQ(s.gold, 0);
  // Numeric labels occur in ARC too.
  auto t = format_mc_row("arc", json::parse(R"({"question": "Two plus two?",
      "choices": {"text": ["three", "four"], "label": ["1", "2"]}, "answerKey": "2"})"));
  EXPECT_EQ(t.gold, 1);
}

TEST(McFormats, HellaSwag) {
  auto s = format_mc_row("hellaswag", json::parse(R"({"activity_label": "Baking cookies",
      "ctx_a": "A man puts flour in a bowl [step] He stirs.", "ctx_b": "then HE",
      "endings": ["adds two eggs [title] Done.", "throws  the bowl."], "label": "0"})"));
  // ctx = ctx_a + " " + capitalize(ctx_b) + " "; [..] spans dropped; double spaces halved.
  EXPECT_EQ(s.query, "Baking cookies: A man puts flour in a bowl He stirs. Then he ");
  EXPECT_EQ(s.choices, (std::vector<std::string>{" adds two eggs. Done.", " throws the bowl."}));
  EXPECT_EQ(s.gold, 0);
  EXPECT_EQ(py_capitalize("éCOLE de PARIS"), "École de paris");
  EXPECT_EQ(hellaswag_preprocess("a [x] b [unclosed\n] c"), "a b [unclosed\n] c");
}

TEST(McFormats, Piqa) {
  auto s = format_mc_row("piqa", json::parse(R"({"goal": "Keep bread fresh", "sol1": "Seal it in a bag.",
      "sol2": "Leave it in the sun.", "label": 0})"));
  EXPECT_EQ(s.query, "Question: Keep bread fresh\nAnswer:");
  EXPECT_EQ(s.choices, (std::vector<std::string>{" Seal it in a bag.", " Leave it in the sun."}));
  EXPECT_EQ(s.gold, 0);
}

TEST(McFormats, OpenBookQa) {
  auto s = format_mc_row("openbookqa", json::parse(R"({"id": "7", "question_stem": "Plants need",
      "choices": {"text": ["light", "noise", "plastic", "ice"], "label": ["A", "B", "C", "D"]}, "answerKey": "A "})"));
  EXPECT_EQ(s.query, "Plants need");
  EXPECT_EQ(s.choices, (std::vector<std::string>{" light", " noise", " plastic", " ice"}));
  EXPECT_EQ(s.gold, 0);
}

TEST(McFormats, WinoGrande) {
  auto s = format_mc_row("winogrande", json::parse(R"({"sentence": "The jar broke because _ was thin. ",
      "option1": "the jar", "option2": "the shelf", "answer": "1"})"));
  // The query keeps its trailing space; choices are option + " " + the stripped rest (no leading space).
  EXPECT_EQ(s.query, "The jar broke because ");
  EXPECT_EQ(s.choices, (std::vector<std::string>{"the jar was thin.", "the shelf was thin."}));
  EXPECT_EQ(s.gold, 0);
}

TEST(McFormats, MmluCloze) {
  auto s = format_mc_row("mmlu", json::parse(R"({"question": "What is 2 + 3?", "subject": "elementary_mathematics",
      "choices": ["4", "5", "6", "7"], "answer": 1})"));
  EXPECT_EQ(s.query, "The following are questions about elementary mathematics.\nQuestion: What is 2 + 3?\nAnswer:");
  EXPECT_EQ(s.choices, (std::vector<std::string>{" 4", " 5", " 6", " 7"}));
  EXPECT_EQ(s.gold, 1);
}

TEST(McFormats, GenericAndErrors) {
  auto s = format_mc_row("mc", json::parse(R"({"query": "Q", "choices": [" a", " b"], "gold_index": 1})"));
  EXPECT_EQ(s.gold, 1);
  using mha2mla::testutil::expect_error;
  expect_error([] { format_mc_row("mc", json::parse(R"({"query": "Q", "choices": [" a"], "gold_index": 3})")); },
               "outside the 1 choices");
  expect_error([] { format_mc_row("mc", json::parse(R"({"choices": [" a"], "gold_index": 0})")); }, "\"query\"");
  expect_error([] { format_mc_row("hellaswag", json::parse(R"({"activity_label": "x", "ctx_a": "a", "ctx_b": "b",
      "endings": ["c"], "label": ""})")); }, "\"label\" is empty");
  expect_error([] { format_mc_row("winogrande", json::parse(R"({"sentence": "no blank", "option1": "a",
      "option2": "b", "answer": "1"})")); }, "exactly one \"_\"");
  expect_error([] { format_mc_row("arc", json::parse(R"({"question": "q", "choices": {"text": ["x"],
      "label": ["A"]}, "answerKey": "B"})")); }, "answerKey \"B\"");
}
