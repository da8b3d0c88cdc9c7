// Byte-level BPE training: round trips, merges, determinism, a brute-force reference, errors, and
// conformance of the trained tokenizer.json with tokenizers.js 0.2.0.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "corpus.h"
#include "npm_oracle.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "testing/files.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using mha2mla::tok::BpeTrainer;
using mha2mla::tok::BpeTrainOptions;
using mha2mla::tok::Tokenizer;
using nlohmann::json;
using mha2mla::testutil::slurp;
using mha2mla::testutil::temp_dir;
using mha2mla::testutil::write_file;

// English-like text with a skewed word distribution, some punctuation, digits and non-ASCII words.
std::string generated_corpus(size_t lines, uint64_t seed) {
  static const std::vector<std::string> words = {
      "the", "and", "of", "to", "in", "that", "he", "shall", "unto", "for", "his", "they", "lord", "be", "is",
      "him", "not", "them", "with", "all", "thou", "was", "thy", "which", "my", "me", "said", "but", "ye",
      "their", "have", "will", "thee", "from", "as", "are", "when", "this", "out", "were", "upon", "man",
      "house", "king", "children", "people", "land", "day", "hand", "God", "Israel", "Jerusalem", "naïve",
      "café", "Straße", "Россия", "日本", "Ωμέγα", "2024", "42", "don't", "it's"};
  mha2mla::corpus::Rng rng(seed);
  std::string out;
  for (size_t l = 0; l < lines; ++l) {
    size_t n = 3 + rng.below(12);
    for (size_t i = 0; i < n; ++i) {
      // Zipf-ish: low indices much more often.
      size_t k = rng.below(words.size());
      k = k * rng.below(words.size()) / words.size();
      if (i) out += rng.below(10) == 0 ? ", " : " ";
      std::string w = words[k];
      if (i == 0 && w[0] >= 'a' && w[0] <= 'z') w[0] = char(w[0] - 32);
      out += w;
    }
    out += rng.below(4) == 0 ? ";\n" : ".\n";
  }
  return out;
}

json train_file(const std::string& path, const BpeTrainOptions& opts, mha2mla::tok::BpeTrainStats* stats = nullptr) {
  BpeTrainer t(opts);
  t.feed_file(path);
  auto j = t.train();
  if (stats) *stats = t.stats();
  return json::parse(j.dump());
}

class BpeTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_dir("suite");
    corpus_path_ = dir_ + "/corpus.txt";
    write_file(corpus_path_, generated_corpus(3000, 7));
    opts_.vocab_size = 450;
    opts_.special_tokens = {"<|endoftext|>", "<|pad|>"};
    json j = train_file(corpus_path_, opts_, &stats_);
    tok_path_ = mha2mla::tok::save_trained_tokenizer(dir_ + "/tok", nlohmann::ordered_json::parse(j.dump()), opts_);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::string dir_, corpus_path_, tok_path_;
  static BpeTrainOptions opts_;
  static mha2mla::tok::BpeTrainStats stats_;
};
std::string BpeTrain::dir_, BpeTrain::corpus_path_, BpeTrain::tok_path_;
BpeTrainOptions BpeTrain::opts_;
mha2mla::tok::BpeTrainStats BpeTrain::stats_;

TEST_F(BpeTrain, WritesStandardFiles) {
  EXPECT_EQ(tok_path_, dir_ + "/tok/tokenizer.json");
  json j = json::parse(slurp(tok_path_));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  EXPECT_TRUE(j["normalizer"].is_null());
  ASSERT_EQ(j["added_tokens"].size(), 2u);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["id"], 0);
  EXPECT_EQ(j["added_tokens"][1]["id"], 1);
  EXPECT_TRUE(j["added_tokens"][1]["special"].get<bool>());
  EXPECT_EQ(j["model"]["vocab"].size(), 450u);
  EXPECT_EQ(j["model"]["merges"].size(), 450u - 2 - 256);
  EXPECT_EQ(stats_.vocab_size, 450);
  EXPECT_TRUE(stats_.reached_vocab_size);
  // Every byte symbol is in the vocab, right after the specials.
  for (int b = 0; b < 256; ++b) {
    std::string sym;
    mha2mla::tok::append_utf8(sym, mha2mla::tok::byte_to_cp(uint8_t(b)));
    ASSERT_TRUE(j["model"]["vocab"].contains(sym)) << b;
    int id = j["model"]["vocab"][sym];
    EXPECT_GE(id, 2);
    EXPECT_LT(id, 258);
  }
  json cfg = json::parse(slurp(dir_ + "/tok/tokenizer_config.json"));
  EXPECT_EQ(cfg["eos_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["bos_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["model_max_length"], 2048);
}

TEST_F(BpeTrain, RoundTripsArbitraryText) {
  Tokenizer tok = Tokenizer::load(tok_path_);
  EXPECT_EQ(tok.vocab_size(), 450);
  auto corpus = mha2mla::corpus::build(std::string(MHA2MLA_SOURCE_DIR) + "/tests/tokenizer/data/seed.txt");
  corpus.push_back("Unseen: ǅemal 🙂🙃 中文字符 עברית \u00A0\u2028 \t\r\n end");
  corpus.push_back(std::string("\x01\x7F") + "\xF0\x9F\x98\x80");
  size_t bad = 0;
  for (const auto& text : corpus) {
    auto ids = tok.encode(text, false);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 450);
    if (tok.decode(ids) != text && bad++ < 3) ADD_FAILURE() << "round trip failed: " << json(text).dump();
  }
  EXPECT_EQ(bad, 0u);
}

TEST_F(BpeTrain, AppliesMerges) {
  Tokenizer tok = Tokenizer::load(tok_path_);
  // Frequent words become one token each; the byte-only encoding would be much longer.
  for (const char* w : {" the", " and", " of", " unto", "The"}) {
    auto ids = tok.encode(w, false);
    EXPECT_EQ(ids.size(), 1u) << w;
  }
  std::string line = "And the people of the land said unto him.";
  EXPECT_LT(tok.encode(line, false).size(), line.size() / 2);
  // Special tokens map to their ids and are never split.
  auto ids = tok.encode(" the<|endoftext|> the<|pad|>", false);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[1], 0);
  EXPECT_EQ(ids[3], 1);
  EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), " the the");
}

TEST_F(BpeTrain, Deterministic) {
  json again = train_file(corpus_path_, opts_);
  std::string path2 = mha2mla::tok::save_trained_tokenizer(dir_ + "/tok2/", nlohmann::ordered_json::parse(again.dump()),
                                                           opts_);
  EXPECT_EQ(slurp(path2), slurp(tok_path_));
  EXPECT_EQ(slurp(dir_ + "/tok2/tokenizer_config.json"), slurp(dir_ + "/tok/tokenizer_config.json"));
}

// Recount-from-scratch BPE on lines of lowercase words separated by single spaces, whose GPT-2 pre-tokens are
// known without a regex: "w1", " w2", ..., "\n". Same tie rule: highest count, then lowest (left id, right id).
std::vector<std::pair<std::string, std::string>> reference_merges(const std::vector<std::string>& lines,
                                                                  size_t vocab_size, size_t n_specials) {
  auto sym = [](unsigned char b) {
    std::string s;
    mha2mla::tok::append_utf8(s, mha2mla::tok::byte_to_cp(b));
    return s;
  };
  std::vector<std::string> vocab(n_specials);
  std::map<std::string, int> ids;
  std::vector<std::pair<uint32_t, int>> alpha;
  for (int b = 0; b < 256; ++b) alpha.emplace_back(mha2mla::tok::byte_to_cp(uint8_t(b)), b);
  std::sort(alpha.begin(), alpha.end());
  int byte_id[256];
  for (auto& [cp, b] : alpha) {
    byte_id[b] = int(vocab.size());
    ids[sym(uint8_t(b))] = int(vocab.size());
    vocab.push_back(sym(uint8_t(b)));
  }
  std::map<std::vector<int>, int64_t> words;
  for (const auto& line : lines) {
    std::vector<std::string> pre;
    size_t start = 0;
    while (start < line.size()) {
      size_t sp = line.find(' ', start + 1);
      if (sp == std::string::npos) sp = line.size();
      pre.push_back(line.substr(start, sp - start));
      start = sp;
    }
    pre.push_back("\n");
    for (const auto& p : pre) {
      std::vector<int> w;
      for (unsigned char c : p) w.push_back(byte_id[c]);
      words[w] += 1;
    }
  }
  std::vector<std::pair<std::string, std::string>> merges;
  while (vocab.size() < vocab_size) {
    std::map<std::pair<int, int>, int64_t> counts;
    for (auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) counts[{w[i], w[i + 1]}] += n;
    std::pair<int, int> best{-1, -1};
    int64_t best_n = 0;
    for (auto& [p, n] : counts)
      if (n > best_n) best_n = n, best = p;  // map order: the first maximum is the lowest pair
    if (best_n < 2) break;
    std::string m = vocab[size_t(best.first)] + vocab[size_t(best.second)];
    int nid;
    if (ids.count(m)) {
      nid = ids[m];
    } else {
      nid = int(vocab.size());
      ids[m] = nid;
      vocab.push_back(m);
    }
    merges.emplace_back(vocab[size_t(best.first)], vocab[size_t(best.second)]);
    std::map<std::vector<int>, int64_t> next;
    for (auto& [w, n] : words) {
      std::vector<int> o;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == best.first && w[i + 1] == best.second) {
          o.push_back(nid);
          ++i;
        } else {
          o.push_back(w[i]);
        }
      }
      next[o] += n;
    }
    words.swap(next);
  }
  return merges;
}

TEST(BpeTrainReference, IncrementalCountsMatchRecount) {
  mha2mla::corpus::Rng rng(99);
  // A tiny alphabet forces many overlapping merges ("aaaa", "abab") and ties.
  std::vector<std::string> lines;
  for (int l = 0; l < 400; ++l) {
    std::string s;
    size_t n = 1 + rng.below(8);
    for (size_t i = 0; i < n; ++i) {
      if (i) s += ' ';
      size_t len = 1 + rng.below(7);
      for (size_t k = 0; k < len; ++k) s += "aabbc"[rng.below(5)];
    }
    lines.push_back(s);
  }
  std::string dir = temp_dir("ref");
  std::string text;
  for (auto& l : lines) text += l + "\n";
  write_file(dir + "/c.txt", text);
  BpeTrainOptions o;
  o.vocab_size = 257 + 120;
  json j = train_file(dir + "/c.txt", o);
  auto ref = reference_merges(lines, size_t(o.vocab_size), 1);
  const auto& merges = j["model"]["merges"];
  ASSERT_EQ(merges.size(), ref.size());
  EXPECT_GT(ref.size(), 100u);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(merges[i][0].get<std::string>(), ref[i].first) << "merge " << i;
    EXPECT_EQ(merges[i][1].get<std::string>(), ref[i].second) << "merge " << i;
  }
  fs::remove_all(dir);
}

TEST(BpeTrainOptionsTest, MinFrequencyStopsEarly) {
  std::string dir = temp_dir("minfreq");
  write_file(dir + "/c.txt", "abc abc abc\nxyz\n");
  BpeTrainOptions o;
  o.vocab_size = 1000;
  o.min_frequency = 3;
  mha2mla::tok::BpeTrainStats st;
  json j = train_file(dir + "/c.txt", o, &st);
  EXPECT_FALSE(st.reached_vocab_size);
  // Pairs seen 3+ times: "ab", "bc", "Ġa" ... but nothing from "xyz".
  for (const auto& m : j["model"]["merges"]) EXPECT_EQ(m[0].get<std::string>().find('x'), std::string::npos);
  EXPECT_GT(j["model"]["merges"].size(), 0u);
  fs::remove_all(dir);
}

TEST(BpeTrainErrors, RejectsBadInput) {
  std::string dir = temp_dir("errors");
  write_file(dir + "/bad.txt", "fine line\nbroken \xC3( here\n");
  write_file(dir + "/empty.txt", "");
  BpeTrainOptions o;
  o.vocab_size = 300;
  {
    BpeTrainer t(o);
    try {
      t.feed_file(dir + "/bad.txt");
      FAIL() << "invalid UTF-8 accepted";
    } catch (const mha2mla::Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("bad.txt:2"), std::string::npos) << msg;
      EXPECT_NE(msg.find("UTF-8"), std::string::npos) << msg;
    }
  }
  {
    BpeTrainer t(o);
    t.feed_file(dir + "/empty.txt");
    EXPECT_THROW(t.train(), mha2mla::Error);
  }
  {
    BpeTrainer t(o);
    EXPECT_THROW(t.feed_file(dir + "/missing.txt"), mha2mla::Error);
  }
  o.vocab_size = 200;
  EXPECT_THROW(BpeTrainer{o}, mha2mla::Error);
  o.vocab_size = 300;
  o.special_tokens = {"<a>", "<a>"};
  EXPECT_THROW(BpeTrainer{o}, mha2mla::Error);
  fs::remove_all(dir);
}

// Training speed on ~4 MB of text (the size of the King James Bible).
TEST(BpeTrainSpeed, FourMegabytesQuickly) {
  std::string dir = temp_dir("speed");
  // Words from random syllables with a skewed distribution: tens of thousands of distinct words, as in real text.
  static const char* syl[] = {"ba", "ke", "ri", "so", "tu", "na", "me", "li", "do", "ga", "pe", "shi", "ro",
                              "an", "el", "is", "or", "un", "th", "ch", "st", "er", "ing", "ed", "ly", "qu",
                              "zo", "vi", "fa", "wu", "yo", "ha", "ni", "mo", "ta", "se", "lu", "ko", "di", "pa"};
  mha2mla::corpus::Rng rng(11);
  std::string text;
  while (text.size() < 4u << 20) {
    for (int w = 0; w < 12; ++w) {
      text += w ? " " : "";
      size_t n = 1 + rng.below(3);
      for (size_t k = 0; k < n; ++k) text += syl[rng.below(40) * rng.below(40) / 40];
      if (rng.below(12) == 0) text += ",";
    }
    text += ".\n";
  }
  write_file(dir + "/big.txt", text);
  BpeTrainOptions o;
  o.vocab_size = 4096;
  auto t0 = std::chrono::steady_clock::now();
  mha2mla::tok::BpeTrainStats st;
  train_file(dir + "/big.txt", o, &st);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ bpe-train ] %.1f MB, %lld unique words -> vocab %d in %.2fs (count %.2fs, merge %.2fs)\n",
              double(text.size()) / 1e6, static_cast<long long>(st.unique_words), st.vocab_size, s, st.count_seconds,
              st.merge_seconds);
  EXPECT_LT(s, 60.0);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// tokenizers.js reads the trained tokenizer.json and must encode exactly as we do.

TEST(BpeTrainConformance, TokenizersJsAgrees) {
  const std::string prefix = mha2mla::oracle::npm_prefix();
  auto setup = mha2mla::oracle::ensure_packages(prefix);
  MHA2MLA_REQUIRE_ORACLE(!setup.skip, setup.message);
  ASSERT_TRUE(setup.ok) << setup.message;

  auto all = mha2mla::corpus::build(std::string(MHA2MLA_SOURCE_DIR) + "/tests/tokenizer/data/seed.txt");
  // Train on the varied corpus (multi-byte scripts get merges too) plus English-like text.
  std::string dir = temp_dir("js");
  std::string text = generated_corpus(2000, 3);
  for (const auto& s : all) text += s + "\n";
  write_file(dir + "/train.txt", text);
  BpeTrainOptions o;
  o.vocab_size = 1500;
  BpeTrainer t(o);
  t.feed_file(dir + "/train.txt");
  mha2mla::tok::save_trained_tokenizer(dir + "/tok", t.train(), o);

  // A few hundred lines: every 8th corpus line, plus unseen text.
  std::vector<std::string> lines;
  for (size_t i = 0; i < all.size(); i += 8) lines.push_back(all[i]);
  for (const auto& l : {"Unseen words: zyzzyva quixotic 🙂 ǅ", "<|endoftext|>The end.<|endoftext|>", "  spaced   out  \n\n"})
    lines.emplace_back(l);
  ASSERT_GE(lines.size(), 300u);
  write_file(dir + "/lines.json", json(lines).dump());
  std::string cmd = "node '" + std::string(MHA2MLA_SOURCE_DIR) + "/tests/oracle/js/encode.mjs' '" + prefix + "' '" +
                    dir + "/tok' '" + dir + "/lines.json' '" + dir + "/out.json'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  json ref = json::parse(slurp(dir + "/out.json"));
  ASSERT_EQ(ref["plain"].size(), lines.size());

  Tokenizer tok = Tokenizer::load(dir + "/tok");
  size_t bad = 0, bad_decode = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    auto js_plain = ref["plain"][i].get<std::vector<int32_t>>();
    auto js_special = ref["special"][i].get<std::vector<int32_t>>();
    auto ours = tok.encode(lines[i], false);
    if (ours != js_plain || tok.encode(lines[i], true) != js_special) {
      if (bad++ < 5) ADD_FAILURE() << "line " << i << " " << json(lines[i]).dump() << ": ids differ from tokenizers.js";
    }
    if (tok.decode(js_plain) != ref["decoded"][i].get<std::string>()) ++bad_decode;
  }
  std::printf("[ bpe-train ] tokenizers.js: %zu lines, %zu id mismatches, %zu decode mismatches\n", lines.size(), bad,
              bad_decode);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(bad_decode, 0u);
  fs::remove_all(dir);
}

}  // namespace
