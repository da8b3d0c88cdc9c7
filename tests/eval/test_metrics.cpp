// LongBench's metrics on cases worked out by hand from the reference definitions (metrics.py, the rouge
// package, difflib and fuzzywuzzy), including their quirks.
#include <gtest/gtest.h>

#include "eval/longbench.h"
#include "eval/longbench_metrics.h"
#include "eval/string_similarity.h"
#include "util/error.h"

using namespace mha2mla::eval;

TEST(QaF1, NormalisesThenCountsTokenOverlap) {
  EXPECT_EQ(normalize_answer("The Eiffel Tower, Paris."), "eiffel tower paris");
  EXPECT_EQ(normalize_answer("  An  apple\tA day "), "apple day");
  EXPECT_EQ(normalize_answer("another theory"), "another theory");  // articles only as whole words
  EXPECT_EQ(normalize_answer("ÉCOLE"), "école");
  // 2 of 3 predicted tokens, both answer tokens: P = 2/3, R = 1, F1 = 0.8.
  EXPECT_NEAR(qa_f1_score("The Eiffel Tower, Paris.", "eiffel tower"), 0.8, 1e-12);
  // Multiset overlap: "cat cat dog" vs "cat cat cat" shares min(2, 3) = 2 tokens: P = R = 2/3.
  EXPECT_NEAR(qa_f1_score("a cat cat dog", "cat cat cat"), 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(qa_f1_score("An apple", "the apple"), 1.0, 1e-12);
  EXPECT_NEAR(qa_f1_score("another theory", "theory"), 2.0 / 3.0, 1e-12);
  EXPECT_EQ(qa_f1_score("yes", "no"), 0.0);
  EXPECT_EQ(qa_f1_score("", "no"), 0.0);
}

TEST(RougeL, SummaryLevelUnionLcsOverDistinctWords) {
  // One sentence each; LCS "the cat on the mat" holds the distinct words {the, cat, on, mat}: 4 of 5 each way.
  const double f = 2.0 * (0.8 * 0.8 / (1.6 + 1e-8));
  EXPECT_NEAR(rouge_score("the cat sat on the mat", "the cat is on the mat"), f, 1e-12);
  // Sentences split on '.': reference "c d" matches {c, d}, "a b e" matches {a, b}: 4 over m = 5 distinct
  // reference words and n = 4 distinct predicted words.
  const double p = 1.0, r = 0.8;
  EXPECT_NEAR(rouge_score("a b. c d", "c d. a b e"), 2.0 * (p * r / (p + r + 1e-8)), 1e-12);
  // Distinct words: repeating a word gains nothing and costs nothing.
  EXPECT_NEAR(rouge_score("the the the", "the"), 2.0 * (1.0 / (2.0 + 1e-8)), 1e-12);
  // "b a" vs "a b": one common word, P = R = 1/2.
  EXPECT_NEAR(rouge_score("b a", "a b"), 2.0 * (0.25 / (1.0 + 1e-8)), 1e-12);
  // The package raises on empty input; LongBench scores that 0.
  EXPECT_EQ(rouge_score("", "a b"), 0.0);
  EXPECT_EQ(rouge_score("...", "a b"), 0.0);
  EXPECT_EQ(rouge_score("x y", "z"), 0.0);
}

TEST(Classification, KeepsTheReferenceRemoveWhileIteratingSkip) {
  const std::vector<std::string> cls{"Location", "Person", "Number"};
  EXPECT_NEAR(classification_score("Person or Location", "Person", cls), 0.5, 1e-12);
  EXPECT_NEAR(classification_score("Type: Person", "Person", cls), 1.0, 1e-12);
  EXPECT_EQ(classification_score("Number", "Person", cls), 0.0);
  EXPECT_EQ(classification_score("nothing", "Person", cls), 0.0);
  // Matches [New, York, New York, Boston]: removing "New" shifts "York" under the iterator, so it stays:
  // [York, New York, Boston] -> 1/3 (a careful loop would give 1/2).
  const std::vector<std::string> cities{"New", "York", "New York", "Boston"};
  EXPECT_NEAR(classification_score("New York or Boston", "New York", cities), 1.0 / 3.0, 1e-12);
}

TEST(RetrievalAndCount, FractionOfNumbersThatAreRight) {
  EXPECT_EQ(retrieval_score("Paragraph 12", "Paragraph 12"), 1.0);
  EXPECT_EQ(retrieval_score("Paragraph 12 and Paragraph 3", "Paragraph 12"), 0.5);
  EXPECT_EQ(retrieval_score("Paragraph 120", "Paragraph 12"), 0.0);
  EXPECT_EQ(retrieval_score("no idea", "Paragraph 12"), 0.0);
  EXPECT_NEAR(retrieval_score(" 3) 3, 7", "Paragraph 3"), 2.0 / 3.0, 1e-12);
  EXPECT_THROW(retrieval_score("1", "twelve"), mha2mla::Error);
  EXPECT_EQ(count_score("There are 7 unique paragraphs out of 10", "7"), 0.5);
  EXPECT_EQ(count_score("7", "7"), 1.0);
  EXPECT_EQ(count_score("seven", "7"), 0.0);
}

TEST(FuzzRatio, DifflibMatchingBlocksAndPythonRounding) {
  // "abc" then nothing: M = 3 of 8 characters -> 75.
  EXPECT_EQ(fuzz_ratio("abcd", "abce"), 75);
  // kitten / sitting: "itt" then "n" to its right: M = 4, 2*4/13 = 61.5 -> 62.
  EXPECT_EQ(fuzz_ratio("kitten", "sitting"), 62);
  // One match in 16 characters: 12.5 rounds to even (12); three: 37.5 -> 38.
  EXPECT_EQ(fuzz_ratio("abcdefgh", "hijklmno"), 12);
  EXPECT_EQ(fuzz_ratio("abcdefgh", "fghijklm"), 38);
  EXPECT_EQ(fuzz_ratio("", ""), 100);  // equality is checked before emptiness
  EXPECT_EQ(fuzz_ratio("", "x"), 0);
  EXPECT_EQ(fuzz_ratio("é", "é"), 100);
  EXPECT_EQ(fuzz_ratio("éa", "éb"), 50);  // code points, not bytes: 1 of 2 + 2
  // Autojunk: in a b of 200 or more characters, those occurring more than len(b)/100 + 1 times are "popular"
  // and cannot seed a match. "zab" vs "ab"*100 + "z": only "z" can seed, so M = 1 (without the rule "ab" would
  // match, M = 2); with "ab"*99 + "z" (199 characters) the rule is off and M = 2.
  std::string b201, b199;
  for (int i = 0; i < 100; ++i) b201 += "ab";
  b199 = b201.substr(0, 198) + "z";
  b201 += "z";
  EXPECT_NEAR(sequence_ratio("zab", b201), 2.0 / 204.0, 1e-15);
  EXPECT_NEAR(sequence_ratio("zab", b199), 4.0 / 202.0, 1e-15);
  // A popular item still extends a match from the start of the range: "ab" vs "ab"*100 gives M = 2.
  EXPECT_NEAR(sequence_ratio("ab", b201.substr(0, 200)), 4.0 / 202.0, 1e-15);
}

TEST(CodeSim, FirstCodeLineAgainstTheAnswer) {
  EXPECT_EQ(code_sim_score("\n// comment\n```python\nreturn x + 1\nmore", "return x + 1"), 1.0);
  // "foo(" then ")": M = 5 of 12 -> 83.33 -> 83.
  EXPECT_NEAR(code_sim_score("\n\nfoo(a)\nbar()", "foo(b)"), 0.83, 1e-12);
  EXPECT_EQ(code_sim_score("# only comments", "x = 1"), 0.0);  // no code line: "" vs answer
}

TEST(LongBenchScoring, FirstLineDatasetsBestAnswerAndBuckets) {
  LongBenchRow row;
  row.dataset = "triviaqa";
  row.answers = {"paris france", "Paris"};
  const auto& tq = longbench_dataset("triviaqa");
  EXPECT_EQ(longbench_sample_score(tq, "\n\nParis\nThe capital of France", row), 1.0);
  // Not a first-line dataset: the whole prediction counts (3 tokens vs "paris france": P = 2/3, R = 1).
  row.dataset = "hotpotqa";
  EXPECT_NEAR(longbench_sample_score(longbench_dataset("hotpotqa"), "Paris\nFrance too", row), 0.8, 1e-12);
  EXPECT_EQ(length_bucket(3999), "0-4k");
  EXPECT_EQ(length_bucket(4000), "4-8k");
  EXPECT_EQ(length_bucket(8000), "8k+");
  EXPECT_EQ(longbench_dataset("passage_retrieval_en").max_new, 32);
  EXPECT_EQ(longbench_dataset("gov_report").metric, "rouge_score");
  EXPECT_THROW(longbench_dataset("dureader"), mha2mla::Error);  // Chinese datasets are not supported

  LongBenchSummary s;
  LongBenchRow a, b, c;
  a.dataset = b.dataset = "trec";
  c.dataset = "lcc";
  a.length = 100, b.length = 5000, c.length = -1;
  s.add(a, 1.0), s.add(b, 0.0), s.add(c, 0.5);
  auto j = s.to_json();
  EXPECT_DOUBLE_EQ(j["datasets"]["trec"]["score"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(j["datasets"]["trec"]["buckets"]["0-4k"]["score"].get<double>(), 100.0);
  EXPECT_DOUBLE_EQ(j["datasets"]["trec"]["buckets"]["4-8k"]["score"].get<double>(), 0.0);
  EXPECT_FALSE(j["datasets"]["lcc"].contains("buckets"));
  EXPECT_DOUBLE_EQ(j["average"].get<double>(), 50.0);  // (50 + 50) / 2
}

TEST(LongBenchPrompt, FillsTemplateAndTruncatesInTheMiddle) {
  LongBenchRow row;
  row.context = "CTX {input}";  // braces inside the data stay as they are
  row.input = "Q";
  EXPECT_EQ(longbench_prompt(longbench_dataset("lcc"), row),
            "Please complete the code given below. \nCTX {input}Next line of code:\n");
  std::vector<int64_t> ids{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(truncate_middle(ids, 4), (std::vector<int64_t>{0, 1, 8, 9}));
  EXPECT_EQ(truncate_middle(ids, 5), (std::vector<int64_t>{0, 1, 8, 9}));  // int(5 / 2) from each side
  EXPECT_EQ(truncate_middle(ids, 10), ids);
}
