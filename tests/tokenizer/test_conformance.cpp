// Conformance against tokenizers.js 0.2.0 on real Llama-2, Llama-3 and Qwen3 tokenizer.json files.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <fstream>

#include "corpus.h"
#include "npm_oracle.h"
#include "testing/files.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

using mha2mla::tok::Tokenizer;
using nlohmann::json;

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

std::string esc(const std::string& text) {
  std::string q = json(text).dump();
  return q.size() > 300 ? q.substr(0, 300) + "...\"" : q;
}

std::string nfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &out,
                        utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string r(reinterpret_cast<char*>(out), size_t(n));
  std::free(out);
  return r;
}

class Conformance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    prefix_ = mha2mla::oracle::npm_prefix();
    setup_ = mha2mla::oracle::ensure_packages(prefix_);
    corpus_ = mha2mla::corpus::build(std::string(MHA2MLA_SOURCE_DIR) + "/tests/tokenizer/data/seed.txt");
  }

  void SetUp() override {
    MHA2MLA_REQUIRE_ORACLE(!setup_.skip, setup_.message);
    ASSERT_TRUE(setup_.ok) << setup_.message;
  }

  // Runs tests/oracle/js/encode.mjs for one tokenizer and compares every corpus line.
  void check(const std::string& name, bool lossless, bool normalize_nfc) {
    const std::string dir = mha2mla::oracle::tokenizer_dir(prefix_, name);
    const std::string work = std::string(MHA2MLA_BINARY_DIR) + "/tok-conformance";
    ASSERT_EQ(std::system(("mkdir -p '" + work + "'").c_str()), 0);
    const std::string tag = work + "/" + name + "-" + std::to_string(::getpid());
    {
      std::ofstream f(tag + ".corpus.json", std::ios::binary);
      f << json(corpus_).dump();
    }
    std::string cmd = "node '" + std::string(MHA2MLA_SOURCE_DIR) + "/tests/oracle/js/encode.mjs' '" + prefix_ +
                      "' '" + dir + "' '" + tag + ".corpus.json' '" + tag + ".out.json'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    json ref;
    {
      std::ifstream f(tag + ".out.json", std::ios::binary);
      ref = json::parse(f);
    }
    std::remove((tag + ".corpus.json").c_str());
    std::remove((tag + ".out.json").c_str());
    ASSERT_EQ(ref["plain"].size(), corpus_.size());

    Tokenizer tok = Tokenizer::load(dir);
    size_t bad_special = 0, bad_plain = 0, bad_decode = 0, bad_roundtrip = 0, shown = 0;
    std::string report;
    for (size_t i = 0; i < corpus_.size(); ++i) {
      const std::string& text = corpus_[i];
      auto js_special = ref["special"][i].get<std::vector<int32_t>>();
      auto js_plain = ref["plain"][i].get<std::vector<int32_t>>();
      auto ours_special = tok.encode(text, true);
      auto ours_plain = tok.encode(text, false);
      bool ok = true;
      if (ours_special != js_special) ++bad_special, ok = false;
      if (ours_plain != js_plain) ++bad_plain, ok = false;
      if (!ok && shown++ < 5) {
        report += "line " + std::to_string(i) + ": " + esc(text) + "\n  js   plain  : " + show(js_plain) +
                  "\n  ours plain  : " + show(ours_plain) + "\n  js   special: " + show(js_special) +
                  "\n  ours special: " + show(ours_special) + "\n";
      }
      std::string js_text = ref["decoded"][i].get<std::string>();
      if (tok.decode(js_plain) != js_text && bad_decode++ < 3)
        report += "decode mismatch line " + std::to_string(i) + ": js " + esc(js_text) + " ours " +
                  esc(tok.decode(js_plain)) + "\n";
      if (lossless) {
        std::string expect = normalize_nfc ? nfc(text) : text;
        std::string back = tok.decode(ours_plain);
        if (back != expect && bad_roundtrip++ < 3)
          report += "roundtrip mismatch line " + std::to_string(i) + ": " + esc(text) + " -> " + esc(back) + "\n";
      }
    }
    std::printf("[ conformance ] %s: %zu lines x {add_special=true,false}: %zu + %zu mismatches, decode %zu, roundtrip %zu\n",
                name.c_str(), corpus_.size(), bad_special, bad_plain, bad_decode, bad_roundtrip);
    EXPECT_EQ(bad_special + bad_plain, 0u) << report;
    EXPECT_EQ(bad_decode, 0u) << report;
    EXPECT_EQ(bad_roundtrip, 0u) << report;
  }

  static std::string prefix_;
  static mha2mla::oracle::Setup setup_;
  static std::vector<std::string> corpus_;
};

std::string Conformance::prefix_;
mha2mla::oracle::Setup Conformance::setup_;
std::vector<std::string> Conformance::corpus_;

TEST(TokenizerCorpus, IsLargeAndVaried) {
  auto corpus_ = mha2mla::corpus::build(std::string(MHA2MLA_SOURCE_DIR) + "/tests/tokenizer/data/seed.txt");
  EXPECT_GE(corpus_.size(), 3000u);
  size_t multiline = 0, non_ascii = 0;
  for (auto& s : corpus_) {
    multiline += s.find('\n') != std::string::npos;
    for (unsigned char c : s)
      if (c >= 0x80) {
        ++non_ascii;
        break;
      }
  }
  EXPECT_GT(multiline, 300u);
  EXPECT_GT(non_ascii, 1000u);
}

TEST_F(Conformance, Llama2) { check("llama2", /*lossless=*/false, false); }
TEST_F(Conformance, Llama3) { check("llama3", /*lossless=*/true, false); }
TEST_F(Conformance, Qwen3) { check("qwen3", /*lossless=*/true, /*normalize_nfc=*/true); }

// Behaviour on the real files that the corpus comparison does not pin down by itself.
TEST_F(Conformance, RealTokenizerDetails) {
  Tokenizer l2 = Tokenizer::load(mha2mla::oracle::tokenizer_dir(prefix_, "llama2") + "/tokenizer.json");
  EXPECT_EQ(l2.encode("", true), std::vector<int32_t>({1}));
  EXPECT_TRUE(l2.encode("", false).empty());
  EXPECT_EQ(l2.token_to_id("<s>"), 1);
  EXPECT_EQ(l2.id_to_token(2), "</s>");
  EXPECT_EQ(l2.vocab_size(), 32000);
  auto ids = l2.encode("Hello<s>world", true);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);  // the literal <s> is the special token
  EXPECT_EQ(l2.decode(l2.encode("Hello world", true), true), "Hello world");

  Tokenizer l3 = Tokenizer::load(mha2mla::oracle::tokenizer_dir(prefix_, "llama3"));
  EXPECT_EQ(l3.vocab_size(), 128256);
  auto e = l3.encode("<|begin_of_text|>Hi<|eot_id|>", false);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0], 128000);
  EXPECT_EQ(l3.decode(e, /*skip_special_tokens=*/true), "Hi");
  EXPECT_EQ(l3.decode(e, false), "<|begin_of_text|>Hi<|eot_id|>");

  Tokenizer q = Tokenizer::load(mha2mla::oracle::tokenizer_dir(prefix_, "qwen3"));
  auto t = q.encode("a<think>b</think>", false);
  EXPECT_EQ(std::count(t.begin(), t.end(), 151667), 1);
  EXPECT_THROW(q.encode("ok\xC3(", false), mha2mla::Error);
}

}  // namespace
