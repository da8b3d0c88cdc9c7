#include "serve/chat_template.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/error.h"

namespace mha2mla::serve {

namespace {

// Python's str.strip() over ASCII whitespace, as the Llama templates apply it to contents.
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

void check_role(const ChatMessage& m) {
  check(m.role == "system" || m.role == "user" || m.role == "assistant",
        "messages: unknown role \"" + m.role + "\" (system, user or assistant)");
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama2: return "llama2";
    case ChatFormat::Llama3: return "llama3";
  }
  return "?";
}

std::optional<ChatFormat> detect_chat_format(const std::string& j) {
  if (j.find("<|start_header_id|>") != std::string::npos && j.find("<|eot_id|>") != std::string::npos)
    return ChatFormat::Llama3;
  if (j.find("<|im_start|>") != std::string::npos && j.find("<|im_end|>") != std::string::npos)
    return ChatFormat::ChatML;
  if (j.find("[INST]") != std::string::npos && j.find("[/INST]") != std::string::npos) return ChatFormat::Llama2;
  return std::nullopt;
}

ModelChat model_chat_format(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  std::ifstream f(path);
  if (!f) return {std::nullopt, "the model folder has no tokenizer_config.json naming a chat template"};
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    return {std::nullopt, path + ": not valid JSON"};
  }
  std::string text;
  const auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return {std::nullopt, path + " has no chat_template"};
  if (it->is_string()) {
    text = it->get<std::string>();
  } else if (it->is_array()) {  // [{name, template}, ...]: the one named "default"
    for (const auto& e : *it)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        text = e["template"].get<std::string>();
  }
  if (text.empty()) return {std::nullopt, path + ": chat_template is neither a string nor a list with a \"default\""};
  auto fmt = detect_chat_format(text);
  if (!fmt) return {std::nullopt, path + ": chat_template is not one this server renders (ChatML, Llama-2, Llama-3)"};
  return {fmt, ""};
}

std::string render_chat(ChatFormat f, const std::vector<ChatMessage>& messages) {
  check(!messages.empty(), "messages: at least one message is needed");
  for (const auto& m : messages) check_role(m);
  std::string out;
  switch (f) {
    case ChatFormat::ChatML:
      // <|im_start|>{role}\n{content}<|im_end|>\n per message, then the assistant's header.
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      return out + "<|im_start|>assistant\n";
    case ChatFormat::Llama3:
      // Meta's template: BOS, then per message a header, the stripped content and <|eot_id|>.
      out = "<|begin_of_text|>";
      for (const auto& m : messages)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + strip(m.content) + "<|eot_id|>";
      return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::Llama2: {
      // Meta's template: an optional system message folded into the first user turn; user and assistant
      // alternate, each user turn "<s>[INST] ... [/INST]", each answer " {content} </s>".
      size_t i = 0;
      std::string system;
      if (messages[0].role == "system") system = "<<SYS>>\n" + strip(messages[0].content) + "\n<</SYS>>\n\n", i = 1;
      for (size_t k = 0; i < messages.size(); ++i, ++k) {
        const auto& m = messages[i];
        const bool user_turn = k % 2 == 0;
        check(m.role == (user_turn ? "user" : "assistant"),
              "messages: the Llama-2 chat format needs user and assistant turns alternating, starting with user "
              "(after an optional system message)");
        if (user_turn) out += "<s>[INST] " + (k == 0 ? system : std::string()) + strip(m.content) + " [/INST]";
        else out += " " + strip(m.content) + " </s>";
      }
      return out;
    }
  }
  return out;
}

}  // namespace mha2mla::serve
