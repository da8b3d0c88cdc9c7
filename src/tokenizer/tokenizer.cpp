#include "tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <deque>

#include "tokenizer/components.h"
#include "tokenizer/unicode.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_read.h"

namespace mha2mla::tok {

namespace {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// Leftmost-longest matcher over added-token strings (byte trie).
class TokenTrie {
 public:
  void add(std::string_view word) {
    if (word.empty()) return;
    int32_t node = 0;
    for (unsigned char c : word) {
      int32_t next = child(node, c);
      if (next < 0) {
        next = int32_t(nodes_.size());
        nodes_.emplace_back();
        nodes_[size_t(node)].kids.emplace_back(c, next);
      }
      node = next;
    }
    nodes_[size_t(node)].terminal = true;
    first_[static_cast<unsigned char>(word[0])] = true;
    empty_ = false;
  }

  // Calls piece(text, is_match) for the alternating unmatched/matched sections, like tokenizers.js'
  // DictionarySplitter.
  template <class F>
  void split(std::string_view text, F&& piece) const {
    size_t start = 0, i = 0, n = text.size();
    if (empty_) {
      if (n) piece(text, false);
      return;
    }
    while (i < n) {
      if (!first_[static_cast<unsigned char>(text[i])]) {
        ++i;
        continue;
      }
      int32_t node = 0;
      size_t best = 0;
      for (size_t j = i; j < n; ++j) {
        node = child(node, static_cast<unsigned char>(text[j]));
        if (node < 0) break;
        if (nodes_[size_t(node)].terminal) best = j + 1 - i;
      }
      if (best) {
        if (i > start) piece(text.substr(start, i - start), false);
        piece(text.substr(i, best), true);
        i += best;
        start = i;
      } else {
        ++i;
      }
    }
    if (start < n) piece(text.substr(start), false);
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    bool terminal = false;
  };
  int32_t child(int32_t node, unsigned char c) const {
    for (auto& [k, v] : nodes_[size_t(node)].kids)
      if (k == c) return v;
    return -1;
  }
  std::vector<Node> nodes_{Node{}};
  bool first_[256] = {};
  bool empty_ = true;
};

}  // namespace

class TokenizerImpl {
 public:
  explicit TokenizerImpl(const json& j);

  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const;

  int32_t vocab_size_ = 0;
  std::vector<std::string> vocab_;  // id -> token (added tokens included)
  std::vector<uint8_t> has_token_;
  std::vector<uint8_t> is_special_;
  StrIdMap token_ids_;             // vocab + added contents (added ids win)
  std::unordered_map<std::string_view, int32_t> added_map_;  // added contents and normalized forms -> id
  size_t max_added_len_ = 0;
  std::deque<std::string> keys_;   // stable storage for keys not in vocab_
  std::vector<AddedToken> added_;
  std::unordered_map<std::string_view, const AddedToken*> added_by_key_;
  std::unordered_set<std::string> added_contents_;
  TokenTrie split_raw_, split_normalized_;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_;
  std::unique_ptr<Decoder> decoder_;

 private:
  const int32_t* added_id(std::string_view s) const {
    if (s.size() > max_added_len_) return nullptr;
    auto it = added_map_.find(s);
    return it == added_map_.end() ? nullptr : &it->second;
  }
  void encode_section(std::string_view text, int section_index, std::vector<int32_t>& out) const;
  void apply_strip(std::vector<std::string_view>& parts) const;
};

TokenizerImpl::TokenizerImpl(const json& j) {
  if (!j.is_object()) fail("tokenizer.json: top level must be an object");
  if (!j.contains("model")) fail("tokenizer.json: missing \"model\"");
  const json& model = j.at("model");
  std::string mtype = model.is_object() ? jstr(model, "type").value_or("BPE") : "";
  if (mtype != "BPE") fail("tokenizer.json: unsupported model type \"" + mtype + "\" (only BPE)");
  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("tokenizer.json: model.vocab must be an object");

  // Ids first, so vocab_ is sized once. Ids are bounded before anything is sized from them.
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    max_id = std::max(max_id, token_id(it.value(), "model.vocab id of \"" + it.key() + "\""));
  const json empty = json::array();
  const json& added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"] : empty;
  for (const auto& a : added) {
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id"))
      fail("tokenizer.json: each added_tokens entry needs a string \"content\" and an \"id\"");
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    t.id = token_id(a.at("id"), "added_tokens id of \"" + t.content + "\"");
    t.special = jbool(a, "special", false);
    t.lstrip = jbool(a, "lstrip", false);
    t.rstrip = jbool(a, "rstrip", false);
    t.single_word = jbool(a, "single_word", false);
    t.normalized = jbool(a, "normalized", !t.special);
    max_id = std::max(max_id, t.id);
    added_.push_back(std::move(t));
  }
  vocab_size_ = max_id + 1;
  vocab_.resize(size_t(vocab_size_));
  has_token_.assign(size_t(vocab_size_), 0);
  is_special_.assign(size_t(vocab_size_), 0);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int32_t id = it.value().get<int32_t>();  // range-checked above
    vocab_[size_t(id)] = it.key();
    has_token_[size_t(id)] = 1;
  }
  token_ids_.reserve(vocab.size() + added_.size());
  for (int32_t id = 0; id < vocab_size_; ++id)
    if (has_token_[size_t(id)]) token_ids_.set(vocab_[size_t(id)], id);

  normalizer_ = make_normalizer(j.contains("normalizer") ? j["normalizer"] : json());
  pre_tokenizer_ = make_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json());

  for (const auto& t : added_) {
    keys_.push_back(t.content);
    std::string_view key = keys_.back();
    if (!has_token_[size_t(t.id)]) {
      vocab_[size_t(t.id)] = t.content;
      has_token_[size_t(t.id)] = 1;
    }
    token_ids_.set(key, t.id);
    added_map_[key] = t.id;
    max_added_len_ = std::max(max_added_len_, key.size());
    added_by_key_[key] = &t;
    added_contents_.insert(t.content);
    if (t.special) is_special_[size_t(t.id)] = 1;
    if (t.normalized && normalizer_) {
      // Normalized tokens are matched in the normalized text.
      std::string norm = t.content;
      normalizer_->apply(norm);
      keys_.push_back(norm);
      std::string_view nkey = keys_.back();
      added_map_[nkey] = t.id;
      max_added_len_ = std::max(max_added_len_, nkey.size());
      added_by_key_[nkey] = &t;
      split_normalized_.add(nkey);
    } else {
      split_raw_.add(key);
    }
  }

  model_ = std::make_unique<BpeModel>(model, token_ids_);
  // Model outputs that spell an added token (or its normalized form) take that token's id.
  std::unordered_map<int32_t, int32_t> remap;
  for (auto& [key, id] : added_map_) {
    const int32_t* model_id = token_ids_.get(key);
    if (model_id && *model_id != id) remap[*model_id] = id;
  }
  model_->set_remap(std::move(remap));
  post_ = make_post_processor(j.contains("post_processor") ? j["post_processor"] : json(), token_ids_);
  decoder_ = make_decoder(j.contains("decoder") ? j["decoder"] : json(), &added_contents_);
}

void TokenizerImpl::apply_strip(std::vector<std::string_view>& parts) const {
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].size() > max_added_len_) continue;
    auto it = added_by_key_.find(parts[i]);
    if (it == added_by_key_.end()) continue;
    if (it->second->lstrip && i > 0) parts[i - 1] = js_trim_end(parts[i - 1]);
    if (it->second->rstrip && i + 1 < parts.size()) parts[i + 1] = js_trim_start(parts[i + 1]);
  }
}

void TokenizerImpl::encode_section(std::string_view section, int section_index, std::vector<int32_t>& out) const {
  std::string normalized(section);
  if (normalizer_) normalizer_->apply(normalized);
  if (normalized.empty()) return;
  std::vector<std::string_view> subs;
  split_normalized_.split(normalized, [&](std::string_view p, bool) { subs.push_back(p); });
  apply_strip(subs);
  thread_local Pieces in, out_pieces;
  for (std::string_view sub : subs) {
    if (sub.empty()) continue;
    if (const int32_t* id = added_id(sub)) {
      out.push_back(*id);
      continue;
    }
    in.clear();
    in.add(sub);
    const Pieces* pieces = &in;
    if (pre_tokenizer_) {
      out_pieces.clear();
      pre_tokenizer_->apply(in, out_pieces, section_index);
      pieces = &out_pieces;
    }
    size_t from = out.size();
    for (size_t k = 0; k < pieces->size(); ++k) model_->encode_piece(pieces->get(k), out);
    model_->fuse_unknown(out, from);
  }
}

std::vector<int32_t> TokenizerImpl::encode(std::string_view text, bool add_special) const {
  size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) fail("invalid UTF-8 at byte " + std::to_string(bad));
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<std::string_view> sections;
  split_raw_.split(text, [&](std::string_view p, bool) { sections.push_back(p); });
  apply_strip(sections);
  for (size_t i = 0; i < sections.size(); ++i) {
    std::string_view s = sections[i];
    if (s.empty()) continue;
    if (const int32_t* id = added_id(s)) {
      ids.push_back(*id);
      continue;
    }
    encode_section(s, int(i), ids);
  }
  if (post_) post_->apply(ids, add_special);
  return ids;
}

std::string TokenizerImpl::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_ || !has_token_[size_t(id)]) continue;  // unknown ids are skipped
    if (skip_special && is_special_[size_t(id)]) continue;
    tokens.push_back(vocab_[size_t(id)]);
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  decoder_->apply(tokens);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::string file = path;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("tokenizer not found: " + path);
  if (S_ISDIR(st.st_mode)) {
    file = path + (path.empty() || path.back() == '/' ? "" : "/") + "tokenizer.json";
    if (::stat(file.c_str(), &st) != 0) fail("no tokenizer.json in folder: " + path);
  }
  return from_json_text(read_text_file(file), file);
}

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& source) {
  const json j = parse_json(text, "invalid tokenizer.json (" + source + ")");
  try {
    return Tokenizer(std::make_unique<TokenizerImpl>(j));
  } catch (const json::exception& e) {
    fail("invalid tokenizer.json (" + source + "): " + e.what());
  } catch (const Error& e) {
    fail(std::string(e.what()) + " [" + source + "]");
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size_; }

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  const int32_t* id = impl_->token_ids_.get(token);
  if (!id) return std::nullopt;
  return *id;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size_ || !impl_->has_token_[size_t(id)])
    fail("token id out of range: " + std::to_string(id));
  return impl_->vocab_[size_t(id)];
}

std::vector<int64_t> encode_text_file(const Tokenizer& tok, const std::string& path) {
  std::string text = read_text_file(path);
  check(!text.empty(), path + " is empty");
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, /*add_special_tokens=*/true);
  } catch (const Error& e) {
    fail(path + ": " + e.what());
  }
  return std::vector<int64_t>(ids.begin(), ids.end());
}

}  // namespace mha2mla::tok
