#pragma once
// Chat prompts for /v1/chat/completions. A model folder's tokenizer_config.json names its template as Jinja
// text; we do not run Jinja, we recognise the three formats the Llama family uses and render them ourselves.
// A template we do not recognise is an error the server answers with 400, never a guess.
#include <optional>
#include <string>
#include <vector>

namespace mha2mla::serve {

enum class ChatFormat { ChatML, Llama2, Llama3 };
const char* chat_format_name(ChatFormat f);  // "chatml", "llama2", "llama3"

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

// The format a Jinja chat template writes, by the markers it emits; nullopt when none matches.
std::optional<ChatFormat> detect_chat_format(const std::string& jinja);

// What a model folder says: its format, or why there is none ("no tokenizer_config.json", "its chat_template is
// not one of ...").
struct ModelChat {
  std::optional<ChatFormat> format;
  std::string why_not;
};
ModelChat model_chat_format(const std::string& model_dir);

// The prompt text for `messages` with the assistant's turn opened (add_generation_prompt), special tokens
// written out: encode it without adding the tokenizer's own. Throws Error on an unknown role or, for Llama-2,
// turns that do not alternate user/assistant.
std::string render_chat(ChatFormat f, const std::vector<ChatMessage>& messages);

}  // namespace mha2mla::serve
