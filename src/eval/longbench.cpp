#include "eval/longbench.h"

#include <numeric>

#include "eval/longbench_metrics.h"
#include "util/error.h"

namespace mha2mla::eval {

namespace {

const std::vector<LongBenchDataset>& datasets() {
  // LongBench's dataset2prompt / dataset2maxlen / dataset2metric for the English datasets (the templates keep
  // LongBench's wording, typos included, so scores stay comparable).
  static const std::vector<LongBenchDataset> d{
      {"narrativeqa",
       "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
       "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
       "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
       "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
       128, "qa_f1_score"},
      {"qasper",
       "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
       "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
       "article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
       "\"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on "
       "the above article as concisely as you can, using a single phrase or sentence if possible. If the question "
       "cannot be answered based on the information in the article, write \"unanswerable\". If the question is a "
       "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\n"
       "Question: {input}\n\nAnswer:",
       128, "qa_f1_score"},
      {"multifieldqa_en",
       "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
       "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       64, "qa_f1_score"},
      {"hotpotqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1_score"},
      {"2wikimqa",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1_score"},
      {"musique",
       "Answer the question based on the given passages. Only give me the answer and do not output any other "
       "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
       "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
       32, "qa_f1_score"},
      {"gov_report",
       "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
       "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
       512, "rouge_score"},
      {"qmsum",
       "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
       "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
       "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
       512, "rouge_score"},
      {"multi_news",
       "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, "
       "write a one-page summary of all the news.\n\nSummary:",
       512, "rouge_score"},
      {"trec",
       "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
       64, "classification_score", true},
      {"triviaqa",
       "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
       "The following are some examples.\n\n{context}\n\n{input}",
       32, "qa_f1_score", true},
      {"samsum", "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
       128, "rouge_score", true},
      {"passage_count",
       "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
       "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
       "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
       "count of unique paragraphs after removing duplicates. The output format should only contain the number, "
       "such as 1, 2, 3, and so on.\n\nThe final answer is: ",
       32, "count_score"},
      {"passage_retrieval_en",
       "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
       "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of "
       "the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", "
       "etc.\n\nThe answer is: ",
       32, "retrieval_score"},
      {"lcc", "Please complete the code given below. \n{context}Next line of code:\n", 64, "code_sim_score"},
      {"repobench-p", "Please complete the code given below. \n{context}{input}Next line of code:\n", 64,
       "code_sim_score"},
      // This project's retrieval task over held-out KJV books (scripts/kjv_tasks.py): the rows carry the whole
      // instruction, and the answer is a short passage number.
      {"kjv_retrieval", "{context}{input}", 4, "retrieval_score"},
  };
  return d;
}

const nlohmann::json& field(const nlohmann::json& row, const std::string& name) {
  check(row.is_object(), "row is not a JSON object");
  auto it = row.find(name);
  check(it != row.end(), "missing field \"" + name + "\"");
  return *it;
}

std::string str_field(const nlohmann::json& row, const std::string& name) {
  const auto& v = field(row, name);
  check(v.is_string(), "field \"" + name + "\" must be a string");
  return v.get<std::string>();
}

std::vector<std::string> str_list(const nlohmann::json& row, const std::string& name, bool allow_null) {
  const auto& v = field(row, name);
  if (allow_null && v.is_null()) return {};
  check(v.is_array(), "field \"" + name + "\" must be a list of strings");
  std::vector<std::string> out;
  for (const auto& x : v) {
    check(x.is_string(), "field \"" + name + "\" must be a list of strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

}  // namespace

const LongBenchDataset& longbench_dataset(const std::string& name) {
  for (const auto& d : datasets())
    if (d.name == name) return d;
  std::string known;
  for (const auto& d : datasets()) known += (known.empty() ? "" : ", ") + d.name;
  fail("unknown LongBench dataset \"" + name + "\" (known: " + known + ")");
}

std::vector<std::string> longbench_dataset_names() {
  std::vector<std::string> out;
  for (const auto& d : datasets()) out.push_back(d.name);
  return out;
}

LongBenchRow parse_longbench_row(const nlohmann::json& row) {
  LongBenchRow r;
  r.dataset = str_field(row, "dataset");
  r.input = str_field(row, "input");
  r.context = str_field(row, "context");
  r.answers = str_list(row, "answers", false);
  check(!r.answers.empty(), "field \"answers\" is empty");
  if (row.contains("all_classes")) r.all_classes = str_list(row, "all_classes", true);
  const auto& id = field(row, "_id");
  check(id.is_string(), "field \"_id\" must be a string");
  r.id = id.get<std::string>();
  if (row.contains("length") && !row["length"].is_null()) {
    check(row["length"].is_number_integer(), "field \"length\" must be an integer");
    r.length = row["length"].get<int64_t>();
  }
  return r;
}

std::string longbench_prompt(const LongBenchDataset& d, const LongBenchRow& row) {
  std::string out;
  const std::string& t = d.prompt;
  for (size_t i = 0; i < t.size();) {
    if (t.compare(i, 9, "{context}") == 0) {
      out += row.context;
      i += 9;
    } else if (t.compare(i, 7, "{input}") == 0) {
      out += row.input;
      i += 7;
    } else {
      out += t[i++];
    }
  }
  return out;
}

std::vector<int64_t> truncate_middle(const std::vector<int64_t>& ids, int64_t max_length) {
  if (static_cast<int64_t>(ids.size()) <= max_length) return ids;
  const int64_t half = max_length / 2;
  std::vector<int64_t> out(ids.begin(), ids.begin() + half);
  out.insert(out.end(), ids.end() - half, ids.end());
  return out;
}

double longbench_sample_score(const LongBenchDataset& d, const std::string& pred, const LongBenchRow& row) {
  std::string p = pred;
  if (d.first_line) {
    const size_t start = p.find_first_not_of('\n');
    p = start == std::string::npos ? "" : p.substr(start);
    p = p.substr(0, p.find('\n'));
  }
  double best = 0.0;
  for (const auto& a : row.answers) best = std::max(best, longbench_metric(d.metric, p, a, row.all_classes));
  return best;
}

std::string length_bucket(int64_t length) {
  if (length < 0) return "";
  return length < 4000 ? "0-4k" : length < 8000 ? "4-8k" : "8k+";
}

void LongBenchSummary::add(const LongBenchRow& row, double score) {
  per_dataset[row.dataset].push_back(score);
  const auto b = length_bucket(row.length);
  if (!b.empty()) per_dataset_bucket[row.dataset][b].push_back(score);
}

double LongBenchSummary::average() const {
  std::vector<double> s;
  for (const auto& [name, v] : per_dataset) s.push_back(100.0 * mean(v));
  return mean(s);
}

nlohmann::json LongBenchSummary::to_json() const {
  nlohmann::json ds = nlohmann::json::object();
  for (const auto& [name, v] : per_dataset) {
    nlohmann::json d{{"score", 100.0 * mean(v)}, {"samples", v.size()}};
    auto it = per_dataset_bucket.find(name);
    if (it != per_dataset_bucket.end()) {
      nlohmann::json b = nlohmann::json::object();
      for (const auto& [bucket, bv] : it->second) b[bucket] = {{"score", 100.0 * mean(bv)}, {"samples", bv.size()}};
      d["buckets"] = b;
    }
    ds[name] = d;
  }
  return {{"datasets", ds}, {"average", average()}};
}

}  // namespace mha2mla::eval
