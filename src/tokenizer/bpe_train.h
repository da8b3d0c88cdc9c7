#pragma once
// Byte-level BPE training (GPT-2 style, as Hugging Face's ByteLevelBPETokenizer trains it).
//
// Text is pre-tokenized exactly as the saved tokenizer.json will pre-tokenize it at encode time
// (ByteLevel pre-tokenizer with the GPT-2 split regex), so every learned merge is reachable when
// encoding. The alphabet is always all 256 byte symbols, so any UTF-8 text encodes without an
// unknown token. Merges are learned greedily: the most frequent adjacent pair is merged until the
// vocabulary (special tokens included) reaches vocab_size or no pair occurs min_frequency times.
// Ties go to the pair with the lowest (left id, right id), which makes training deterministic.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mha2mla::tok {

struct BpeTrainOptions {
  int32_t vocab_size = 4096;  // total, special tokens included
  int64_t min_frequency = 2;  // a pair must occur this often to be merged
  std::vector<std::string> special_tokens{"<|endoftext|>"};  // ids 0.. in this order
  int64_t model_max_length = 2048;  // written to tokenizer_config.json
};

struct BpeTrainStats {
  int64_t lines = 0, bytes = 0;
  int64_t words = 0, unique_words = 0;  // pre-tokens seen / distinct
  int32_t vocab_size = 0;               // final, special tokens included
  int32_t merges = 0;
  bool reached_vocab_size = false;  // false: stopped because no pair reached min_frequency
  double count_seconds = 0, merge_seconds = 0;
};

class BpeTrainer {
 public:
  explicit BpeTrainer(BpeTrainOptions opts);
  ~BpeTrainer();
  BpeTrainer(const BpeTrainer&) = delete;
  BpeTrainer& operator=(const BpeTrainer&) = delete;

  // Counts the pre-tokens of one text (a line, or a whole document). Occurrences of special tokens
  // are cut out first, as the encoder never hands them to the model. Throws Error on invalid UTF-8.
  void feed(std::string_view text);
  // Feeds FILE line by line (each line with its '\n'); errors name the file and line.
  // progress(bytes_done, bytes_total) is called now and then.
  void feed_file(const std::string& path, const std::function<void(int64_t, int64_t)>& progress = {});

  // Learns the merges and returns a complete tokenizer.json object. Throws Error if nothing was fed.
  nlohmann::ordered_json train(const std::function<void(int32_t, int32_t)>& progress = {});

  const BpeTrainStats& stats() const { return stats_; }

 private:
  struct Counts;
  BpeTrainOptions opts_;
  std::unique_ptr<Counts> counts_;
  BpeTrainStats stats_;
};

// The tokenizer_config.json that HF loaders expect next to a trained tokenizer.json.
nlohmann::ordered_json bpe_tokenizer_config(const BpeTrainOptions& opts);

// Writes PATH (tokenizer.json) and tokenizer_config.json in the same folder, each atomically.
// A PATH not ending in ".json" (or an existing folder) is a folder, created if missing, that receives
// tokenizer.json.
// Returns the tokenizer.json path written.
std::string save_trained_tokenizer(const std::string& path, const nlohmann::ordered_json& tokenizer,
                                   const BpeTrainOptions& opts);

}  // namespace mha2mla::tok
