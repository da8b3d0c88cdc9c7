#include "tokenizer/bpe_train.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <unordered_map>

#include "tokenizer/components.h"
#include "tokenizer/unicode.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace mha2mla::tok {

namespace {

using ojson = nlohmann::ordered_json;

// The same pre-tokenizer object is written to tokenizer.json and used for counting, so training and
// encoding split text identically. ByteLevel with use_regex (rather than Split + ByteLevel) because
// tokenizers.js hard-codes the GPT-2 regex for it, exactly as our encoder does.
ojson pre_tokenizer_json() {
  return ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
int32_t pair_left(uint64_t k) { return int32_t(k >> 32); }
int32_t pair_right(uint64_t k) { return int32_t(k & 0xffffffffu); }

// Queue order: highest count first, then the lowest (left id, right id).
struct QueueKey {
  int64_t count;
  uint64_t pair;
  bool operator<(const QueueKey& o) const { return count != o.count ? count > o.count : pair < o.pair; }
};

}  // namespace

struct BpeTrainer::Counts {
  std::unique_ptr<PreTokenizer> pre;
  std::unordered_map<std::string, int64_t> words;  // byte-level mapped pre-token -> count
  Pieces in, out;
};

BpeTrainer::BpeTrainer(BpeTrainOptions opts) : opts_(std::move(opts)), counts_(std::make_unique<Counts>()) {
  std::set<std::string> seen;
  for (const auto& s : opts_.special_tokens) {
    check(!s.empty(), "special tokens must not be empty");
    check(find_invalid_utf8(s) == std::string_view::npos, "special token is not valid UTF-8");
    check(seen.insert(s).second, "special token \"" + s + "\" given twice");
  }
  const int32_t min_vocab = int32_t(opts_.special_tokens.size()) + 256;
  check(opts_.vocab_size >= min_vocab, "vocab size " + std::to_string(opts_.vocab_size) + " is below the minimum " +
                                           std::to_string(min_vocab) + " (special tokens + 256 byte symbols)");
  check(opts_.min_frequency >= 1, "min frequency must be at least 1");
  counts_->pre = make_pre_tokenizer(nlohmann::json::parse(pre_tokenizer_json().dump()));
}

BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::feed(std::string_view text) {
  size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) fail("invalid UTF-8 at byte " + std::to_string(bad));
  auto t0 = std::chrono::steady_clock::now();
  ++stats_.lines;
  stats_.bytes += int64_t(text.size());
  Counts& c = *counts_;
  auto count_section = [&](std::string_view s) {
    if (s.empty()) return;
    c.in.clear();
    c.out.clear();
    c.in.add(s);
    c.pre->apply(c.in, c.out, 0);
    for (size_t i = 0; i < c.out.size(); ++i) {
      std::string_view w = c.out.get(i);
      if (w.empty()) continue;
      ++stats_.words;
      auto it = c.words.find(std::string(w));
      if (it == c.words.end()) c.words.emplace(std::string(w), 1);
      else ++it->second;
    }
  };
  // Cut out special tokens (leftmost, then longest), like the encoder's added-token split.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    for (const auto& s : opts_.special_tokens) {
      size_t f = text.find(s, pos);
      if (f != std::string_view::npos && (f < best || (f == best && s.size() > best_len))) {
        best = f;
        best_len = s.size();
      }
    }
    if (best == std::string_view::npos) {
      count_section(text.substr(pos));
      break;
    }
    count_section(text.substr(pos, best - pos));
    pos = best + best_len;
  }
  stats_.count_seconds += seconds_since(t0);
}

void BpeTrainer::feed_file(const std::string& path, const std::function<void(int64_t, int64_t)>& progress) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open " + path);
  struct stat st {};
  int64_t total = ::stat(path.c_str(), &st) == 0 ? int64_t(st.st_size) : 0;
  std::string line;
  int64_t line_no = 0, done = 0;
  while (std::getline(f, line)) {
    ++line_no;
    done += int64_t(line.size()) + 1;
    if (!f.eof()) line += '\n';  // the newline is part of the text, as in HF's train_from_files
    try {
      feed(line);
    } catch (const Error& e) {
      fail(path + ":" + std::to_string(line_no) + ": " + e.what());
    }
    if (progress && (line_no & 1023) == 0) progress(std::min(done, total), total);
  }
  if (f.bad()) fail("error reading " + path);
  if (progress) progress(total, total);
}

ojson BpeTrainer::train(const std::function<void(int32_t, int32_t)>& progress) {
  auto t0 = std::chrono::steady_clock::now();
  Counts& c = *counts_;
  check(!c.words.empty(), "no training text (input is empty)");

  // Vocabulary: special tokens, then the 256 byte symbols in code point order (as HF sorts its alphabet).
  std::vector<std::string> vocab;
  std::unordered_map<std::string, int32_t> ids;
  for (const auto& s : opts_.special_tokens) {
    ids.emplace(s, int32_t(vocab.size()));
    vocab.push_back(s);
  }
  std::vector<std::pair<uint32_t, int>> alphabet;
  for (int b = 0; b < 256; ++b) alphabet.emplace_back(byte_to_cp(uint8_t(b)), b);
  std::sort(alphabet.begin(), alphabet.end());
  std::array<int32_t, 256> byte_id{};
  for (auto& [cp, b] : alphabet) {
    std::string sym;
    append_utf8(sym, cp);
    check(!ids.count(sym), "special token \"" + sym + "\" collides with a byte symbol");
    byte_id[size_t(b)] = int32_t(vocab.size());
    ids.emplace(sym, int32_t(vocab.size()));
    vocab.push_back(sym);
  }

  // Words as symbol-id sequences.
  struct Word {
    std::vector<int32_t> sym;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(c.words.size());
  for (auto& [w, n] : c.words) {
    Word word{{}, n};
    for (size_t i = 0; i < w.size();) {
      int b = cp_to_byte(next_cp(w, i));
      check(b >= 0, "internal error: pre-token outside the byte alphabet");
      word.sym.push_back(byte_id[size_t(b)]);
    }
    words.push_back(std::move(word));
  }
  stats_.unique_words = int64_t(words.size());
  c.words.clear();

  // Pair counts, the words each pair occurs in, and an ordered queue kept exactly in sync with the counts.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  for (uint32_t wi = 0; wi < words.size(); ++wi) {
    const auto& s = words[wi].sym;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t p = pair_key(s[i], s[i + 1]);
      pair_count[p] += words[wi].count;
      auto& list = where[p];
      if (list.empty() || list.back() != wi) list.push_back(wi);
    }
  }
  std::set<QueueKey> queue;
  for (auto& [p, n] : pair_count) queue.insert({n, p});

  ojson merges = ojson::array();
  std::vector<uint32_t> visited(words.size(), UINT32_MAX);
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged_sym;
  const int32_t target = opts_.vocab_size;
  uint32_t step = 0;
  while (int32_t(vocab.size()) < target && !queue.empty()) {
    QueueKey top = *queue.begin();
    if (top.count < opts_.min_frequency) break;
    const int32_t a = pair_left(top.pair), b = pair_right(top.pair);
    std::string merged = vocab[size_t(a)] + vocab[size_t(b)];
    int32_t nid;
    if (auto it = ids.find(merged); it != ids.end()) {
      nid = it->second;  // the same string reached by another merge path keeps its id
    } else {
      nid = int32_t(vocab.size());
      ids.emplace(merged, nid);
      vocab.push_back(merged);
    }
    merges.push_back(ojson::array({vocab[size_t(a)], vocab[size_t(b)]}));

    std::vector<uint32_t> occurrences = std::move(where[top.pair]);
    where.erase(top.pair);
    delta.clear();
    for (uint32_t wi : occurrences) {
      if (visited[wi] == step) continue;
      visited[wi] = step;
      Word& w = words[wi];
      const auto& s = w.sym;
      merged_sym.clear();
      bool changed = false;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          merged_sym.push_back(nid);
          ++i;
          changed = true;
        } else {
          merged_sym.push_back(s[i]);
        }
      }
      if (!changed) continue;  // a stale entry: an earlier merge already consumed the pair here
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= w.count;
      for (size_t i = 0; i + 1 < merged_sym.size(); ++i) {
        uint64_t p = pair_key(merged_sym[i], merged_sym[i + 1]);
        delta[p] += w.count;
        if (merged_sym[i] == nid || merged_sym[i + 1] == nid) {
          auto& list = where[p];
          if (list.empty() || list.back() != wi) list.push_back(wi);
        }
      }
      w.sym.swap(merged_sym);
    }
    for (auto& [p, d] : delta) {
      if (d == 0) continue;
      auto it = pair_count.find(p);
      int64_t old = it == pair_count.end() ? 0 : it->second;
      if (old > 0) queue.erase({old, p});
      int64_t now = old + d;
      if (now > 0) {
        pair_count[p] = now;
        queue.insert({now, p});
      } else if (it != pair_count.end()) {
        pair_count.erase(it);
      }
    }
    ++step;
    if (progress && (step & 63) == 0) progress(int32_t(vocab.size()), target);
  }
  if (progress) progress(int32_t(vocab.size()), target);
  stats_.vocab_size = int32_t(vocab.size());
  stats_.merges = int32_t(merges.size());
  stats_.reached_vocab_size = int32_t(vocab.size()) >= target;
  stats_.merge_seconds = seconds_since(t0);

  ojson added = ojson::array();
  for (size_t i = 0; i < opts_.special_tokens.size(); ++i)
    added.push_back(ojson{{"id", int32_t(i)},
                          {"content", opts_.special_tokens[i]},
                          {"single_word", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"normalized", false},
                          {"special", true}});
  ojson vocab_json = ojson::object();
  for (size_t i = 0; i < vocab.size(); ++i) vocab_json[vocab[i]] = int32_t(i);
  ojson model{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", false},
              {"ignore_merges", false},
              {"vocab", std::move(vocab_json)},
              {"merges", std::move(merges)}};
  ojson byte_level{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return ojson{{"version", "1.0"},
               {"truncation", nullptr},
               {"padding", nullptr},
               {"added_tokens", std::move(added)},
               {"normalizer", nullptr},
               {"pre_tokenizer", pre_tokenizer_json()},
               {"post_processor", byte_level},
               {"decoder", byte_level},
               {"model", std::move(model)}};
}

ojson bpe_tokenizer_config(const BpeTrainOptions& opts) {
  ojson decoder = ojson::object();
  for (size_t i = 0; i < opts.special_tokens.size(); ++i)
    decoder[std::to_string(i)] = ojson{{"content", opts.special_tokens[i]}, {"lstrip", false}, {"normalized", false},
                                       {"rstrip", false}, {"single_word", false}, {"special", true}};
  // BOS/EOS: <|endoftext|> when present (GPT-2 convention), else the first special token.
  std::string eos;
  for (const auto& s : opts.special_tokens)
    if (s == "<|endoftext|>") eos = s;
  if (eos.empty() && !opts.special_tokens.empty()) eos = opts.special_tokens[0];
  ojson cfg{{"add_bos_token", false}, {"add_eos_token", false}, {"added_tokens_decoder", std::move(decoder)}};
  if (!eos.empty()) {
    cfg["bos_token"] = eos;
    cfg["eos_token"] = eos;
    cfg["unk_token"] = eos;
  }
  cfg["clean_up_tokenization_spaces"] = false;  // keep decode(encode(x)) == x
  cfg["model_max_length"] = opts.model_max_length;
  cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
  return cfg;
}

std::string save_trained_tokenizer(const std::string& path, const ojson& tokenizer, const BpeTrainOptions& opts) {
  check(!path.empty(), "empty output path");
  std::string file = path, dir;
  struct stat st {};
  const bool is_json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (path.back() == '/' || !is_json || (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
    dir = path.back() == '/' ? path.substr(0, path.size() - 1) : path;
    if (dir.empty()) dir = "/";
    ::mkdir(dir.c_str(), 0755);
    file = (dir == "/" ? "" : dir) + "/tokenizer.json";
  } else {
    size_t slash = path.rfind('/');
    dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  }
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) fail("output folder does not exist: " + dir);
  write_text_atomic(file, tokenizer.dump(2) + "\n");
  write_text_atomic((dir == "/" ? "" : dir) + "/tokenizer_config.json", bpe_tokenizer_config(opts).dump(2) + "\n");
  return file;
}

}  // namespace mha2mla::tok
