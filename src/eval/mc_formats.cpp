#include "eval/mc_formats.h"

#include <utf8proc.h>

#include <algorithm>

#include "eval/string_similarity.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace mha2mla::eval {

namespace {

using nlohmann::json;

const json& field(const json& row, const std::string& name) {
  check(row.is_object(), "row is not a JSON object");
  auto it = row.find(name);
  check(it != row.end(), "missing field \"" + name + "\"");
  return *it;
}

std::string str(const json& row, const std::string& name) {
  const auto& v = field(row, name);
  check(v.is_string(), "field \"" + name + "\" must be a string");
  return v.get<std::string>();
}

std::vector<std::string> str_list(const json& v, const std::string& name) {
  check(v.is_array() && !v.empty(), "field \"" + name + "\" must be a non-empty list of strings");
  std::vector<std::string> out;
  for (const auto& x : v) {
    check(x.is_string(), "field \"" + name + "\" must be a list of strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

// An integer given as a number or a numeric string ("label": "2" in HellaSwag, "answer": "1" in WinoGrande).
int64_t int_field(const json& row, const std::string& name) {
  const auto& v = field(row, name);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    check(!s.empty(), "field \"" + name + "\" is empty (a test row without its answer?)");
    try {
      size_t pos = 0;
      long long x = std::stoll(s, &pos);
      if (pos == s.size()) return x;
    } catch (...) {
    }
  }
  fail("field \"" + name + "\" must be an integer");
}

// ARC / OpenBookQA "choices": {"text": [...], "label": [...]}.
void text_label_choices(const json& row, std::vector<std::string>& text, std::vector<std::string>& label) {
  const auto& c = field(row, "choices");
  check(c.is_object(), "field \"choices\" must be an object with \"text\" and \"label\"");
  text = str_list(field(c, "text"), "choices.text");
  label = str_list(field(c, "label"), "choices.label");
  check(text.size() == label.size(), "choices.text and choices.label differ in length");
}

int64_t index_of(const std::vector<std::string>& v, const std::string& x, const std::string& what) {
  auto it = std::find(v.begin(), v.end(), x);
  check(it != v.end(), what + " \"" + x + "\" is not among the choice labels");
  return it - v.begin();
}

std::string trim_ws(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t p = 0;
  while ((p = s.find(from, p)) != std::string::npos) {
    s.replace(p, from.size(), to);
    p += to.size();
  }
  return s;
}

McSample checked(McSample s) {
  check(!s.choices.empty(), "no choices");
  check(s.gold >= 0 && s.gold < static_cast<int64_t>(s.choices.size()),
        "gold index " + std::to_string(s.gold) + " is outside the " + std::to_string(s.choices.size()) + " choices");
  return s;
}

}  // namespace

const std::vector<std::string>& mc_task_names() {
  static const std::vector<std::string> names{"mc", "arc", "hellaswag", "piqa", "openbookqa", "winogrande", "mmlu"};
  return names;
}

bool is_mc_task(const std::string& task) {
  const auto& n = mc_task_names();
  return std::find(n.begin(), n.end(), task) != n.end();
}

std::string py_capitalize(const std::string& s) {
  auto cps = code_points(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) {
    auto c = static_cast<utf8proc_int32_t>(cps[i]);
    tok::append_utf8(out, static_cast<uint32_t>(i == 0 ? utf8proc_toupper(c) : utf8proc_tolower(c)));
  }
  return out;
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string t = replace_all(text, " [title]", ". ");
  // re.sub("\\[.*?\\]", "", t): shortest bracketed spans, not crossing a newline.
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t[i] == '[') {
      size_t j = i + 1;
      while (j < t.size() && t[j] != ']' && t[j] != '\n') ++j;
      if (j < t.size() && t[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out += t[i++];
  }
  // str.replace("  ", " "): one left-to-right pass over non-overlapping pairs.
  std::string r;
  for (size_t i = 0; i < out.size();) {
    if (out.compare(i, 2, "  ") == 0) {
      r += ' ';
      i += 2;
    } else {
      r += out[i++];
    }
  }
  return r;
}

McSample format_mc_row(const std::string& task, const json& row) {
  McSample s;
  if (task == "mc") {
    s.query = str(row, "query");
    s.choices = str_list(field(row, "choices"), "choices");
    s.gold = int_field(row, "gold_index");
  } else if (task == "arc") {
    std::vector<std::string> text, label;
    text_label_choices(row, text, label);
    s.query = "Question: " + str(row, "question") + "\nAnswer:";
    for (const auto& c : text) s.choices.push_back(" " + c);
    s.gold = index_of(label, str(row, "answerKey"), "answerKey");
  } else if (task == "openbookqa") {
    std::vector<std::string> text, label;
    text_label_choices(row, text, label);
    s.query = str(row, "question_stem");
    for (const auto& c : text) s.choices.push_back(" " + c);
    s.gold = index_of({"A", "B", "C", "D", "E"}, trim_ws(str(row, "answerKey")), "answerKey");
  } else if (task == "hellaswag") {
    const std::string ctx = str(row, "ctx_a") + " " + py_capitalize(str(row, "ctx_b")) + " ";
    s.query = hellaswag_preprocess(str(row, "activity_label") + ": " + ctx);
    for (const auto& e : str_list(field(row, "endings"), "endings")) s.choices.push_back(" " + hellaswag_preprocess(e));
    s.gold = int_field(row, "label");
  } else if (task == "piqa") {
    s.query = "Question: " + str(row, "goal") + "\nAnswer:";
    s.choices = {" " + str(row, "sol1"), " " + str(row, "sol2")};
    s.gold = int_field(row, "label");
  } else if (task == "winogrande") {
    const std::string sentence = str(row, "sentence");
    const size_t blank = sentence.find('_');
    check(blank != std::string::npos && sentence.find('_', blank + 1) == std::string::npos,
          "field \"sentence\" must hold exactly one \"_\"");
    s.query = sentence.substr(0, blank);
    const std::string rest = trim_ws(sentence.substr(blank + 1));
    s.choices = {str(row, "option1") + " " + rest, str(row, "option2") + " " + rest};
    s.gold = int_field(row, "answer") - 1;
  } else if (task == "mmlu") {
    const std::string topic = replace_all(str(row, "subject"), "_", " ");
    s.query = "The following are questions about " + topic + ".\nQuestion: " + str(row, "question") + "\nAnswer:";
    for (const auto& c : str_list(field(row, "choices"), "choices")) s.choices.push_back(" " + c);
    s.gold = int_field(row, "answer");
  } else {
    fail("unknown multiple-choice task \"" + task + "\"");
  }
  return checked(std::move(s));
}

}  // namespace mha2mla::eval
