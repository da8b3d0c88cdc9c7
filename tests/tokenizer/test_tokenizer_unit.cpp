// Tokenizer unit tests on small hand-written tokenizer.json files (no network needed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>

#include "testing/files.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

using mha2mla::Error;
using mha2mla::testutil::error_of;
using mha2mla::tok::Tokenizer;
using nlohmann::json;
using Ids = std::vector<int32_t>;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mha2mla-tok-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Byte-level BPE in the GPT-2 style ("Ġ" is the mapped space byte).
json byte_level_json() {
  json j;
  j["version"] = "1.0";
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"},
                {"unk_token", nullptr},
                {"vocab",
                 {{"h", 0}, {"e", 1}, {"l", 2}, {"o", 3}, {"Ġ", 4}, {"w", 5}, {"r", 6}, {"d", 7}, {"he", 8},
                  {"ll", 9}, {"hell", 10}, {"hello", 11}, {"Ġw", 12}}},
                {"merges", {"h e", "l l", "he ll", "hell o", "Ġ w"}}};
  j["added_tokens"] = json::array(
      {{{"id", 20}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}, {"lstrip", false},
        {"rstrip", false}, {"single_word", false}},
       {{"id", 21}, {"content", "<extra>"}, {"special", false}, {"normalized", false}, {"lstrip", true},
        {"rstrip", true}, {"single_word", false}}});
  return j;
}

// SentencePiece-style BPE (Llama-2 / Mistral layout) with byte fallback and a BOS template.
json sentencepiece_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\xE2\x96\x81"] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab["\xE2\x96\x81" "a"] = 262;
  vocab["\xE2\x96\x81" "ab"] = 263;
  json j;
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers",
                      {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                       {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  j["model"] = {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
                {"vocab", vocab}, {"merges", json::array({json::array({"\xE2\x96\x81", "a"}), json::array({"\xE2\x96\x81" "a", "b"})})}};
  j["added_tokens"] = json::array();
  for (auto [id, s] : {std::pair{0, "<unk>"}, {1, "<s>"}, {2, "</s>"}})
    j["added_tokens"].push_back({{"id", id}, {"content", s}, {"special", true}, {"normalized", false}});
  return j;
}

Tokenizer load_json(const TempDir& d, const json& j) {
  d.write("tokenizer.json", j.dump());
  return Tokenizer::load(d.path());
}

TEST(TokenizerUnit, ByteLevelBpeMerges) {
  TempDir d;
  Tokenizer t = load_json(d, byte_level_json());
  EXPECT_EQ(t.encode("hello world", false), Ids({11, 12, 3, 6, 2, 7}));
  EXPECT_EQ(t.encode("hello world", true), t.encode("hello world", false));  // ByteLevel post-processor adds nothing
  EXPECT_EQ(t.decode({11, 12, 3, 6, 2, 7}), "hello world");
  EXPECT_EQ(t.vocab_size(), 22);
  EXPECT_EQ(t.token_to_id("hello"), 11);
  EXPECT_EQ(t.token_to_id("<|end|>"), 20);
  EXPECT_FALSE(t.token_to_id("nope").has_value());
  EXPECT_EQ(t.id_to_token(12), "Ġw");
  EXPECT_THROW(t.id_to_token(15), Error);
  EXPECT_THROW(t.id_to_token(-1), Error);
}

TEST(TokenizerUnit, EmptyString) {
  TempDir d;
  Tokenizer t = load_json(d, byte_level_json());
  EXPECT_TRUE(t.encode("", false).empty());
  EXPECT_TRUE(t.encode("", true).empty());
  EXPECT_EQ(t.decode({}), "");
  TempDir d2;
  Tokenizer sp = load_json(d2, sentencepiece_json());
  EXPECT_TRUE(sp.encode("", false).empty());
  EXPECT_EQ(sp.encode("", true), Ids({1}));
}

TEST(TokenizerUnit, AddedTokensAreNeverSplit) {
  TempDir d;
  Tokenizer t = load_json(d, byte_level_json());
  EXPECT_EQ(t.encode("hello<|end|>hello", false), Ids({11, 20, 11}));
  EXPECT_EQ(t.encode("<|end|><|end|>", false), Ids({20, 20}));
  // lstrip/rstrip on <extra> swallow the surrounding whitespace.
  EXPECT_EQ(t.encode("hello  <extra>  hello", false), Ids({11, 21, 11}));
  // Partial matches are ordinary text ('<' and '|' are not in this toy vocab: no unk, so dropped).
  EXPECT_EQ(t.encode("<|end|", false), Ids({1, 7}));
  EXPECT_EQ(t.decode({11, 20, 11}), "hello<|end|>hello");
  EXPECT_EQ(t.decode({11, 20, 11}, /*skip_special_tokens=*/true), "hellohello");
  EXPECT_EQ(t.decode({11, 21, 11}, true), "hello<extra>hello");  // non-special added tokens stay
}

TEST(TokenizerUnit, SentencePieceStyle) {
  TempDir d;
  Tokenizer t = load_json(d, sentencepiece_json());
  EXPECT_EQ(t.encode("ab ab", false), Ids({263, 263}));
  EXPECT_EQ(t.encode("ab ab", true), Ids({1, 263, 263}));
  // é is not in the vocab: byte fallback to <0xC3> <0xA9>.
  EXPECT_EQ(t.encode("\xC3\xA9", false), Ids({259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode({1, 259, 3 + 0xC3, 3 + 0xA9}, true), "\xC3\xA9");
  EXPECT_EQ(t.decode(t.encode("ab ab", true), true), "ab ab");
  EXPECT_EQ(t.decode(t.encode("ab ab", true), false), "<s> ab ab");
  // Special token in text; the following section gets its own "▁" prefix (as HF does).
  EXPECT_EQ(t.encode("ab</s>ab", true), Ids({1, 263, 2, 263}));
}

TEST(TokenizerUnit, FuseUnkWithoutByteFallback) {
  TempDir d;
  json j = sentencepiece_json();
  j["model"]["byte_fallback"] = false;
  Tokenizer t = load_json(d, j);
  EXPECT_EQ(t.encode("a\xC3\xA9\xC3\xA8", false), Ids({262, 0}));  // é and è fuse into one <unk>
  j["model"]["fuse_unk"] = false;
  TempDir d2;
  Tokenizer t2 = load_json(d2, j);
  EXPECT_EQ(t2.encode("a\xC3\xA9\xC3\xA8", false), Ids({262, 0, 0}));
}

TEST(TokenizerUnit, InvalidUtf8) {
  TempDir d;
  Tokenizer t = load_json(d, byte_level_json());
  struct Case {
    std::string text;
    size_t at;
  };
  for (const Case& c : std::vector<Case>{{"\xFF", 0},
                                         {"hello\x80", 5},
                                         {"he\xE2\x82", 2},           // truncated
                                         {"ab\xC0\xAF", 2},           // overlong
                                         {"x\xED\xA0\x80y", 1},       // surrogate
                                         {"ok\xF4\x90\x80\x80", 2},   // > U+10FFFF
                                         {"\xC3\xA9\xC3(", 2},
                                         {"<|end|>\xFE", 7}}) {
    EXPECT_EQ(error_of([&] { t.encode(c.text, false); }), "invalid UTF-8 at byte " + std::to_string(c.at))
        << json(std::vector<uint8_t>(c.text.begin(), c.text.end())).dump();
  }
  EXPECT_NO_THROW(t.encode("\xF0\x9F\x99\x82 \xE2\x82\xAC \xC3\xA9", false));
}

TEST(TokenizerUnit, MissingOrCorruptFile) {
  TempDir d;
  std::string missing = d.path() + "/nope.json";
  EXPECT_NE(error_of([&] { Tokenizer::load(missing); }).find("not found"), std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("no tokenizer.json"), std::string::npos);
  d.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, ");
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("invalid tokenizer.json"), std::string::npos);
  d.write("tokenizer.json", "[1, 2, 3]");
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("tokenizer.json"), std::string::npos);
  d.write("tokenizer.json", "{\"added_tokens\": []}");
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("missing \"model\""), std::string::npos);
  d.write("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("unsupported model type"), std::string::npos);
  json j = byte_level_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  d.write("tokenizer.json", j.dump());
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("regex"), std::string::npos);
  j = byte_level_json();
  j["model"]["vocab"]["h"] = "zero";
  d.write("tokenizer.json", j.dump());
  EXPECT_NE(error_of([&] { Tokenizer::load(d.path()); }).find("not an integer"), std::string::npos);
}

// Ids are bounded before anything is sized from them: no silent int32 truncation, no overflow of
// max_id + 1, no multi-GB tables from one large id.
TEST(TokenizerUnit, TokenIdsAreBounded) {
  for (const json& bad : {json(int64_t(1) << 40), json(2147483647), json(1500000000), json(-1), json(4194304),
                          json(uint64_t(18446744073709551615ull)), json(1.5)}) {
    SCOPED_TRACE(bad.dump());
    json j = byte_level_json();
    j["model"]["vocab"]["h"] = bad;
    const std::string e = error_of([&] { Tokenizer::from_json_text(j.dump(), "t.json"); });
    EXPECT_NE(e.find("vocab id of \"h\""), std::string::npos) << e;
    EXPECT_NE(e.find("t.json"), std::string::npos) << e;
    j = byte_level_json();
    j["added_tokens"] = {{{"id", bad}, {"content", "<x>"}, {"special", true}}};
    const std::string e2 = error_of([&] { Tokenizer::from_json_text(j.dump(), "t.json"); });
    EXPECT_NE(e2.find("added_tokens id of \"<x>\""), std::string::npos) << e2;
  }
  json j = byte_level_json();
  j["added_tokens"] = {{{"id", 4194303}, {"content", "<last>"}, {"special", true}}};
  EXPECT_EQ(Tokenizer::from_json_text(j.dump(), "t.json").vocab_size(), 4194304);
  j["added_tokens"] = {{{"content", "<x>"}}};
  EXPECT_NE(error_of([&] { Tokenizer::from_json_text(j.dump(), "t.json"); }).find("added_tokens entry"), std::string::npos);
}

// Nesting is bounded before parsing, so recursive builders (Sequence) and error messages cannot overflow the stack.
TEST(TokenizerUnit, DeepNestingIsRefused) {
  json j = byte_level_json();
  std::string deep = j.dump();
  const std::string seq = R"({"type": "Sequence", "normalizers": [)";
  std::string norm;
  for (int i = 0; i < 100000; ++i) norm += seq;
  for (int i = 0; i < 100000; ++i) norm += "]}";
  deep.insert(deep.size() - 1, ", \"normalizer\": " + norm);
  const std::string e = error_of([&] { Tokenizer::from_json_text(deep, "deep.json"); });
  EXPECT_NE(e.find("deep.json"), std::string::npos) << e;
  EXPECT_NE(e.find("nested deeper"), std::string::npos) << e;
  // A few levels are fine.
  json n = nullptr;
  for (int i = 0; i < 10; ++i) n = {{"type", "Sequence"}, {"normalizers", json::array({n.is_null() ? json{{"type", "NFC"}} : n})}};
  j["normalizer"] = n;
  EXPECT_NO_THROW(Tokenizer::from_json_text(j.dump(), "ok.json"));
}

TEST(TokenizerUnit, SplitBehaviors) {
  // A Split pre-tokenizer on digits with each behavior, followed by ByteLevel without regex.
  auto make = [](const std::string& behavior, bool invert) {
    json j = byte_level_json();
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", behavior}, {"invert", invert}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    return j;
  };
  {
    TempDir d;
    Tokenizer t = load_json(d, make("Isolated", false));
    EXPECT_EQ(t.encode("hello world", false), Ids({11, 4, 5, 3, 6, 2, 7}));
  }
  {
    TempDir d;
    Tokenizer t = load_json(d, make("Removed", false));
    EXPECT_EQ(t.encode("hello world", false), Ids({11, 5, 3, 6, 2, 7}));
  }
  {
    TempDir d;
    Tokenizer t = load_json(d, make("MergedWithNext", false));
    EXPECT_EQ(t.encode("hello world", false), Ids({11, 12, 3, 6, 2, 7}));
  }
  {
    TempDir d;
    Tokenizer t = load_json(d, make("MergedWithPrevious", false));
    EXPECT_EQ(t.encode("hello world", false), Ids({11, 4, 5, 3, 6, 2, 7}));
  }
}

TEST(TokenizerUnit, CaseInsensitiveContractionsAreAsciiOnly) {
  // (?i:'s) must match 'S but not the long s (U+017F), like tokenizers.js.
  json j = byte_level_json();
  j["model"]["vocab"]["'"] = 30;
  j["model"]["vocab"]["s"] = 31;
  j["model"]["vocab"]["S"] = 32;
  j["model"]["vocab"]["'S"] = 33;
  j["model"]["merges"].push_back("' S");
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", "(?i:'s)|[^\\s']+|\\s+|'"}}}, {"behavior", "Isolated"}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  TempDir d;
  Tokenizer t = load_json(d, j);
  EXPECT_EQ(t.encode("he'S", false), Ids({8, 33}));
}

}  // namespace
