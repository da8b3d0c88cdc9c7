#pragma once
// Tokenized training data: shard files, their preparation from text/JSONL, and batch samplers.
//
// Shard file format "M2MLTOK1" (ours; every integer little-endian):
//   offset  0  8 bytes  magic "M2MLTOK1"
//   offset  8  uint32   version, 1
//   offset 12  uint32   bytes per token: 2 (uint16 ids, used when vocab_size <= 65536) or 4 (uint32)
//   offset 16  uint64   token count N
//   offset 24  uint64   reserved, 0
//   offset 32  N token ids
// The file size must be exactly 32 + N * bytes_per_token. Documents are concatenated, each followed by
// the EOS id, so a window may span a document boundary (the model sees EOS there), as in GPT-2/nanoGPT.
// A prepared data folder holds train.bin, val.bin and meta.json
// ({format, vocab_size, dtype, eos_id, tokens{train,val}, documents{train,val}, tokenizer, sources, ...}).
//
// Also readable: datatrove/nanotron tokenized files ("*.ds"), which are raw little-endian token ids
// without a header (uint16, or uint32 with token_size 4), optionally with "X.ds.index" (uint64 document
// end offsets, in tokens) and "X.ds.metadata" (text: tokenizer name, token count, human-readable count).
// A .ds file does not record its token size: it is taken from the caller, else from the .metadata
// token count, else from the last .index entry; with none of these, opening fails.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mha2mla::train {

constexpr int64_t kShardHeaderBytes = 32;
constexpr const char* kShardMagic = "M2MLTOK1";

// 2 when every id of a vocab of this size fits uint16, else 4.
int token_bytes_for_vocab(int64_t vocab_size);

// A memory-mapped, read-only shard. Movable, not copyable.
class TokenShard {
 public:
  // PATH is an M2MLTOK1 file, or a datatrove ".ds" file (token_bytes: 2 or 4, 0 = find out as
  // described above; ignored for M2MLTOK1, whose header says it). Validates the header and the file
  // size; errors name the file.
  static TokenShard open(const std::string& path, int token_bytes = 0);

  TokenShard() = default;
  TokenShard(TokenShard&&) noexcept;
  TokenShard& operator=(TokenShard&&) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard();

  const std::string& path() const { return path_; }
  int64_t size() const { return size_; }  // tokens
  int bytes_per_token() const { return bytes_; }
  int64_t operator[](int64_t i) const {
    return bytes_ == 2 ? int64_t(reinterpret_cast<const uint16_t*>(tokens_)[i])
                       : int64_t(reinterpret_cast<const uint32_t*>(tokens_)[i]);
  }
  // Copies tokens [start, start + n) as int64; throws Error when out of range.
  void read(int64_t start, int64_t n, int64_t* out) const;
  // The largest id in the shard (-1 when empty); scans once, then cached.
  int64_t max_token() const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* tokens_ = nullptr;
  int64_t size_ = 0;
  int bytes_ = 2;
  mutable int64_t max_ = -2;  // -2: not scanned yet
};

// Throws Error ("token id X at position P of FILE is >= the model's vocab size V") if any id >= vocab.
void check_vocab(const TokenShard& shard, int64_t vocab_size);

// Streams token ids into an M2MLTOK1 file: written under a temporary name, published by rename in
// finish(); destroyed without finish(), it leaves nothing behind.
class ShardWriter {
 public:
  ShardWriter(std::string path, int bytes_per_token);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  void append(const int32_t* ids, size_t n);  // ids must fit the token width (checked)
  int64_t size() const { return count_; }
  void finish();

 private:
  std::string path_, tmp_;
  int bytes_;
  int64_t count_ = 0;
  std::unique_ptr<std::ofstream> out_;
  std::vector<unsigned char> buf_;
  bool finished_ = false;
  void flush_buffer();
};

// ------------------------------------------------------------------------------------------------
// Preparation (mha2mla data)

enum class DocSep { Blank, Line };  // documents separated by blank lines, or one per line

struct PrepareOptions {
  std::string tokenizer;                 // tokenizer.json or a folder holding one
  std::vector<std::string> inputs;       // split into train/val by val_fraction
  std::vector<std::string> val_inputs;   // every document goes to val
  std::string out_dir;
  double val_fraction = 0.0;
  std::optional<std::string> jsonl_field;  // set: every input is JSONL with the text in this field
  DocSep doc_sep = DocSep::Blank;
  uint64_t seed = 0;
  std::optional<int64_t> eos_id;  // default: "<|endoftext|>", else tokenizer_config.json's eos_token
  int threads = 0;                // tokenizer threads; 0 = hardware concurrency
};

struct PrepareResult {
  nlohmann::json meta;  // what meta.json holds
  double seconds = 0;
};

// Reads inputs (plain text, or JSONL for files ending in .jsonl or when jsonl_field is set), tokenizes
// each document without special tokens, appends EOS, and writes OUT/train.bin, OUT/val.bin and
// OUT/meta.json atomically. Errors name the file and line.
PrepareResult prepare_data(const PrepareOptions& opts,
                           const std::function<void(int64_t bytes_done, int64_t bytes_total)>& progress = {});

// The deterministic split: whether document INDEX (0-based over the --in documents) goes to val.
bool is_val_document(int64_t index, uint64_t seed, double val_fraction);

// ------------------------------------------------------------------------------------------------
// Sampling

// The shard files that PATH names: a file is itself; a folder gives its SPLIT.bin (train.bin / val.bin)
// when present, else all its *.bin, else all its *.ds files, sorted. Errors when nothing matches.
std::vector<std::string> resolve_shards(const std::string& path, const std::string& split = "train");

struct DataSource {
  std::string path;     // shard file or folder (see resolve_shards)
  double weight = 1.0;  // relative; need not sum to 1
};

// The draw for step k is a pure function of (seed, k, rank), so (step, seed) is the whole state.
struct SamplerState {
  int64_t step = 0;
  uint64_t seed = 0;
  nlohmann::json to_json() const;
  static SamplerState from_json(const nlohmann::json& j);
};

// Random windows of seq_len+1 tokens from a weighted mixture of sources: each sample picks a source
// with probability proportional to its weight, then a uniformly random window start within that source
// (all its shards' windows pooled). Batches are [batch_size, seq_len+1] int64: inputs are [:, :-1], next-
// token targets [:, 1:]. Sample i of rank r at step k is draw number k*world*B + r*B + i, so data-parallel
// ranks never share a draw and a run resumes exactly from state().
class MixtureSampler {
 public:
  MixtureSampler(const std::vector<DataSource>& sources, int64_t seq_len, int64_t batch_size, uint64_t seed,
                 int64_t rank = 0, int64_t world_size = 1);

  torch::Tensor next();                        // the batch of the current step, then step += 1
  torch::Tensor batch_at(int64_t step) const;  // pure: does not move the step

  SamplerState state() const { return {step_, seed_}; }
  void set_state(const SamplerState& s);

  // check_vocab over every shard of every source.
  void check_vocab(int64_t vocab_size) const;

  struct Draw {
    int32_t source;
    int32_t shard;
    int64_t start;  // first token of the window in that shard
  };
  Draw draw(int64_t sample_index) const;

  int64_t seq_len() const { return seq_len_; }
  int64_t batch_size() const { return batch_; }
  int64_t num_sources() const { return int64_t(sources_.size()); }
  int64_t source_tokens(int64_t i) const;

 private:
  struct Source {
    std::string path;
    std::vector<TokenShard> shards;
    std::vector<int64_t> window_ends;  // cumulative window counts over shards
    double cum_weight = 0;             // cumulative normalised weight, last = 1
  };
  std::vector<Source> sources_;
  int64_t seq_len_, batch_;
  uint64_t seed_;
  int64_t rank_, world_;
  int64_t step_ = 0;
};

// Validation: consecutive non-overlapping windows of seq_len+1 tokens (window w starts at w*seq_len, so
// every token after the first is a target exactly once), in order, across the shards of PATH (a folder
// gives its val.bin). max_windows >= 0 keeps only the first ones; ranks take windows w % world == rank.
class SequentialBatches {
 public:
  SequentialBatches(const std::string& path, int64_t seq_len, int64_t batch_size, int64_t max_windows = -1,
                    int64_t rank = 0, int64_t world_size = 1);

  int64_t num_windows() const { return int64_t(windows_.size()); }  // this rank's
  // Fills the next [b, seq_len+1] int64 batch (b <= batch_size, the last may be short); false at the end.
  bool next(torch::Tensor& batch);
  void reset() { pos_ = 0; }
  void check_vocab(int64_t vocab_size) const;

 private:
  std::vector<TokenShard> shards_;
  std::vector<std::pair<int32_t, int64_t>> windows_;  // (shard, start)
  int64_t seq_len_, batch_;
  size_t pos_ = 0;
};

}  // namespace mha2mla::train
