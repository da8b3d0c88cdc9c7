#pragma once
// LongBench-style generation tasks: per-dataset prompt templates, generation lengths and metrics (LongBench's
// configuration for its English datasets, plus this project's KJV retrieval task), scoring as LongBench's
// eval.py does (best score over the answers; first line only for the few-shot datasets), and LongBench-E's
// length buckets.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mha2mla::eval {

struct LongBenchDataset {
  std::string name;
  std::string prompt;   // with {context} and {input}
  int64_t max_new = 0;  // tokens generated
  std::string metric;   // a name longbench_metric() knows
  bool first_line = false;  // score only the prediction's first line (trec, triviaqa, samsum)
};

// The dataset named `name`, or an error listing the known ones.
const LongBenchDataset& longbench_dataset(const std::string& name);
std::vector<std::string> longbench_dataset_names();

struct LongBenchRow {
  std::string id, dataset, input, context;
  std::vector<std::string> answers, all_classes;
  int64_t length = -1;  // LongBench's "length" (words); -1 when absent
};
// Errors name the field.
LongBenchRow parse_longbench_row(const nlohmann::json& row);

// The template with {context} and {input} filled in (Python's str.format for these two fields).
std::string longbench_prompt(const LongBenchDataset& d, const LongBenchRow& row);

// LongBench's middle truncation: over max_length ids, keep the first and last max_length/2.
std::vector<int64_t> truncate_middle(const std::vector<int64_t>& ids, int64_t max_length);

// One prediction's score in [0, 1]: the best over the answers.
double longbench_sample_score(const LongBenchDataset& d, const std::string& pred, const LongBenchRow& row);

// LongBench-E's bucket of a row by its length: "0-4k", "4-8k" or "8k+" (empty when the length is unknown).
std::string length_bucket(int64_t length);

// Aggregated ×100 scores: per dataset, their unweighted average, and per dataset per bucket.
struct LongBenchSummary {
  std::map<std::string, std::vector<double>> per_dataset;                               // raw [0, 1] scores
  std::map<std::string, std::map<std::string, std::vector<double>>> per_dataset_bucket;  // dataset -> bucket -> scores
  void add(const LongBenchRow& row, double score);
  nlohmann::json to_json() const;  // {"datasets": {name: {"score", "samples", "buckets": {...}}}, "average"}
  double average() const;          // mean over datasets of 100 * mean score
};

}  // namespace mha2mla::eval
