#pragma once
// One sequence's generated tokens as text, as they come: what can be sent now (whole UTF-8 characters, nothing
// that may still become a stop string), and where a stop string ends the text (the stop string itself is not
// part of it, as OpenAI's API has it).
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace mha2mla::serve {

class TextStream {
 public:
  // `skip`: ids that produce no text (the model's EOS ids).
  TextStream(const tok::Tokenizer& tok, std::vector<std::string> stop, std::vector<int64_t> skip);
  // Adds one generated token; returns the text that became final with it. Once stopped(), returns "".
  std::string push(int64_t id);
  // At the end of generation: the text held back, unless a stop string ended it.
  std::string finish();
  bool stopped() const { return stopped_; }
  const std::string& text() const { return sent_; }  // everything returned so far

 private:
  std::string emit_up_to(const std::string& full, size_t end);

  const tok::Tokenizer& tok_;
  std::vector<std::string> stop_;
  std::vector<int64_t> skip_;
  std::vector<int32_t> ids_;
  std::string sent_;
  bool stopped_ = false;
};

}  // namespace mha2mla::serve
