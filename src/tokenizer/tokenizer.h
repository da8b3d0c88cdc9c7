#pragma once
// Hugging Face tokenizer.json: byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM) and
// SentencePiece-style BPE with byte fallback (Llama-2, Mistral).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mha2mla::tok {

class TokenizerImpl;

class Tokenizer {
 public:
  // PATH is a tokenizer.json or a folder holding one. Throws mha2mla::Error.
  static Tokenizer load(const std::string& path);
  // The text of a tokenizer.json; errors name `source`.
  static Tokenizer from_json_text(std::string_view text, const std::string& source);

  // Throws mha2mla::Error on invalid UTF-8. add_special_tokens mirrors HF's flag (post-processor template).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // including added tokens
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int32_t id) const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  std::unique_ptr<TokenizerImpl> impl_;
};

// The whole file as one string with the tokenizer's default special tokens (as HF add_special_tokens=True);
// errors name the file (missing, empty, invalid UTF-8).
std::vector<int64_t> encode_text_file(const Tokenizer& tok, const std::string& path);

}  // namespace mha2mla::tok
