#pragma once
// Pipeline stages of a Hugging Face tokenizer.json: normalizers, pre-tokenizers, the BPE model,
// post-processors and decoders. Internal to the tokenizer library.
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tokenizer/flat_map.h"
#include "tokenizer/regex.h"

namespace mha2mla::tok {

using json = nlohmann::json;
using StrIdMap = FlatStrMap<int32_t>;

// Reads optional fields tolerating explicit nulls (common in tokenizer.json).
bool jbool(const json& j, const char* key, bool def);
std::optional<std::string> jstr(const json& j, const char* key);

// Token ids in a tokenizer.json lie in [0, kMaxTokenId): far above any real vocabulary (~260k), low enough
// that tables sized by the largest id stay small.
constexpr int64_t kMaxTokenId = int64_t(1) << 22;
// j as a token id; throws Error "tokenizer.json: WHAT ..." if it is not an integer in [0, kMaxTokenId).
int32_t token_id(const json& j, const std::string& what);

// A "pattern" object: {"String": "..."} or {"Regex": "..."}.
std::unique_ptr<Regex> make_pattern(const json& pattern);

// ---------------------------------------------------------------------------------------------
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);  // null json -> nullptr

// ---------------------------------------------------------------------------------------------
// Pre-token pieces share one buffer so splitting allocates nothing per piece.
struct Pieces {
  std::string buf;
  std::vector<std::pair<uint32_t, uint32_t>> spans;  // (offset, length) into buf
  void clear() {
    buf.clear();
    spans.clear();
  }
  void add(std::string_view s) {
    spans.emplace_back(uint32_t(buf.size()), uint32_t(s.size()));
    buf.append(s);
  }
  std::string_view get(size_t i) const { return std::string_view(buf).substr(spans[i].first, spans[i].second); }
  size_t size() const { return spans.size(); }
};

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  // section_index: index of the text section between added tokens (Metaspace prepend_scheme "first").
  virtual void apply(const Pieces& in, Pieces& out, int section_index) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);

// ---------------------------------------------------------------------------------------------
// Open-addressing map from a token-id pair to (merge rank, merged id).
class PairMap {
 public:
  void reserve(size_t n);
  void insert(int32_t a, int32_t b, int32_t rank, int32_t merged);
  // Returns false when the pair has no merge.
  bool find(int32_t a, int32_t b, int32_t& rank, int32_t& merged) const {
    if (slots_.empty()) return false;
    uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    size_t i = hash(key);
    for (;;) {
      const Slot& s = slots_[i];
      if (s.key == key) {
        rank = s.rank;
        merged = s.merged;
        return true;
      }
      if (s.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  size_t hash(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t count_ = 0;
};

class BpeModel {
 public:
  // vocab/ids are owned by the tokenizer; `token_ids` maps every vocab and added-token string to its id.
  BpeModel(const json& model, const StrIdMap& token_ids);

  // Appends the ids of one pre-token (already in the model's alphabet).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  // HF fuse_unk: consecutive unknown tokens collapse into one.
  void fuse_unknown(std::vector<int32_t>& ids, size_t from) const;

  std::optional<int32_t> unk_id() const { return unk_id_; }
  void set_remap(std::unordered_map<int32_t, int32_t> remap) { remap_ = std::move(remap); }

 private:
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  int32_t lookup(std::string_view s) const {
    const int32_t* id = ids_.get(s);
    return id ? *id : -1;
  }
  int32_t remapped(int32_t id) const {
    if (remap_.empty()) return id;
    auto it = remap_.find(id);
    return it == remap_.end() ? id : it->second;
  }

  const StrIdMap& ids_;
  PairMap merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string end_of_word_suffix_;
  std::array<int32_t, 256> byte_ids_{};
  std::unordered_map<int32_t, int32_t> remap_;

  // Bounded pre-token -> ids cache.
  struct Cache {
    std::mutex mu;
    FlatStrMap<std::pair<uint32_t, uint32_t>> index;  // -> (offset, count) in ids
    std::vector<int32_t> ids;
  };
  mutable Cache cache_;
  static constexpr size_t kCacheMaxEntries = 1 << 17;
  static constexpr size_t kCacheMaxPiece = 256;
};

// ---------------------------------------------------------------------------------------------
struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t>& ids, bool add_special) const = 0;
};
// `token_id` resolves token strings used by processors that name tokens without ids.
std::unique_ptr<PostProcessor> make_post_processor(const json& j, const StrIdMap& token_ids);

// ---------------------------------------------------------------------------------------------
struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};
// added_contents: tokens that the ByteLevel decoder passes through untouched.
std::unique_ptr<Decoder> make_decoder(const json& j, const std::unordered_set<std::string>* added_contents);

}  // namespace mha2mla::tok
