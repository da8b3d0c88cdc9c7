#pragma once
// LongBench's scoring functions (metrics.py of the LongBench repository), rewritten with the same
// normalisation. Each takes one prediction and one ground truth and returns a score in [0, 1].
#include <string>
#include <vector>

namespace mha2mla::eval {

// SQuAD normalisation: lower case, drop ASCII punctuation (Python's string.punctuation), replace the words
// a / an / the with a space, collapse whitespace.
std::string normalize_answer(const std::string& s);

// Token F1 between the normalised, whitespace-split prediction and answer (multiset overlap).
double qa_f1_score(const std::string& pred, const std::string& truth);

// ROUGE-L F as the `rouge` package computes it (Rouge().get_scores(...)["rouge-l"]["f"]): both texts split into
// sentences on '.', words split on single spaces; summary-level union LCS over distinct words;
// F = 2PR / (P + R + 1e-8). An empty text (which makes the package raise) scores 0.
double rouge_score(const std::string& pred, const std::string& truth);

// Fraction of the classes found in the prediction that are the answer: 1/len(matches) when the answer is among
// the classes the prediction contains (classes contained in the answer are dropped first, with the reference's
// remove-while-iterating skip), else 0.
double classification_score(const std::string& pred, const std::string& truth, const std::vector<std::string>& all_classes);

// Of the numbers (runs of digits) in the prediction, the fraction equal to N from "Paragraph N" in the answer.
double retrieval_score(const std::string& pred, const std::string& truth);

// Of the numbers in the prediction, the fraction equal to the answer.
double count_score(const std::string& pred, const std::string& truth);

// The prediction's first line (after leading newlines) holding none of ` # //, compared with the answer by
// fuzz.ratio / 100.
double code_sim_score(const std::string& pred, const std::string& truth);

// One of the names above ("qa_f1_score", ...), applied by name.
double longbench_metric(const std::string& metric, const std::string& pred, const std::string& truth,
                        const std::vector<std::string>& all_classes);

}  // namespace mha2mla::eval
