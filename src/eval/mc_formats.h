#pragma once
// Multiple-choice tasks: raw dataset rows (JSON objects) turned into a query, choices and gold index, following
// the prompt functions of the lighteval task file the MHA2MLA paper evaluated with (SmolLM's): arc, hellaswag,
// piqa, openbookqa, winogrande, mmlu (cloze), and the generic `mc` rows {query, choices, gold_index}.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "eval/multiple_choice.h"

namespace mha2mla::eval {

// The task names formats know, in help order.
const std::vector<std::string>& mc_task_names();
bool is_mc_task(const std::string& task);

// One row in the task's schema; errors name the missing or malformed field.
McSample format_mc_row(const std::string& task, const nlohmann::json& row);

// HellaSwag's cleaning (from the harness): " [title]" -> ". ", drop "[...]" spans, "  " -> " ".
std::string hellaswag_preprocess(const std::string& text);

// Python's str.capitalize(): first character upper case, the rest lower case.
std::string py_capitalize(const std::string& s);

}  // namespace mha2mla::eval
