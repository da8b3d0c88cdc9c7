// Token shards, data preparation, the mixture sampler and the validation iterator.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "tokenizer/bpe_train.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"
#include "testing/files.h"
#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using namespace mha2mla;
using train::TokenShard;
using mha2mla::testutil::error_of;
using mha2mla::testutil::slurp;
using mha2mla::testutil::temp_dir;
using mha2mla::testutil::write_file;

void write_shard(const std::string& path, const std::vector<int32_t>& ids, int width = 2) {
  train::ShardWriter w(path, width);
  w.append(ids.data(), ids.size());
  w.finish();
}

std::vector<int32_t> iota_ids(int32_t n, int32_t from = 0, int32_t mod = 1 << 30) {
  std::vector<int32_t> v(size_t(n), 0);
  for (int32_t i = 0; i < n; ++i) v[size_t(i)] = from + i % mod;
  return v;
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// ------------------------------------------------------------------------------------------------
// Shards

TEST(TokenShardTest, WriteAndReadBothWidths) {
  std::string dir = temp_dir("shard");
  auto ids = iota_ids(1000, 0, 65536);
  ids[7] = 65535;
  write_shard(dir + "/a.bin", ids, 2);
  std::vector<int32_t> big = {0, 70000, 1 << 30, 5};
  write_shard(dir + "/b.bin", big, 4);

  TokenShard a = TokenShard::open(dir + "/a.bin");
  EXPECT_EQ(a.size(), 1000);
  EXPECT_EQ(a.bytes_per_token(), 2);
  EXPECT_EQ(a[7], 65535);
  EXPECT_EQ(a[999], 999);
  EXPECT_EQ(a.max_token(), 65535);
  std::vector<int64_t> buf(3);
  a.read(10, 3, buf.data());
  EXPECT_EQ(buf, (std::vector<int64_t>{10, 11, 12}));
  EXPECT_THROW(a.read(998, 3, buf.data()), Error);
  EXPECT_EQ(fs::file_size(dir + "/a.bin"), 32u + 2000u);
  std::string raw = slurp(dir + "/a.bin");
  EXPECT_EQ(raw.substr(0, 8), "M2MLTOK1");

  TokenShard b = TokenShard::open(dir + "/b.bin");
  EXPECT_EQ(b.size(), 4);
  EXPECT_EQ(b.bytes_per_token(), 4);
  EXPECT_EQ(b[2], 1 << 30);
  EXPECT_EQ(b.max_token(), 1 << 30);

  TokenShard moved = std::move(a);
  EXPECT_EQ(moved[999], 999);
  EXPECT_EQ(train::token_bytes_for_vocab(65536), 2);
  EXPECT_EQ(train::token_bytes_for_vocab(65537), 4);

  // A uint16 shard refuses ids that do not fit; an unfinished writer leaves nothing.
  {
    train::ShardWriter w(dir + "/c.bin", 2);
    std::vector<int32_t> bad = {70000};
    EXPECT_THROW(w.append(bad.data(), 1), Error);
  }
  EXPECT_FALSE(fs::exists(dir + "/c.bin"));
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos);
  fs::remove_all(dir);
}

TEST(TokenShardTest, EmptyShard) {
  std::string dir = temp_dir("empty-shard");
  write_shard(dir + "/e.bin", {});
  TokenShard e = TokenShard::open(dir + "/e.bin");
  EXPECT_EQ(e.size(), 0);
  EXPECT_EQ(e.max_token(), -1);
  fs::remove_all(dir);
}

TEST(TokenShardTest, CorruptFilesAreClearErrors) {
  std::string dir = temp_dir("corrupt");
  write_shard(dir + "/ok.bin", iota_ids(100));
  std::string raw = slurp(dir + "/ok.bin");

  write_file(dir + "/truncated.bin", raw.substr(0, raw.size() - 3));
  std::string msg = error_of([&] { TokenShard::open(dir + "/truncated.bin"); });
  EXPECT_CONTAINS(msg, "truncated.bin");
  EXPECT_CONTAINS(msg, "truncated or corrupt");
  EXPECT_CONTAINS(msg, "100 tokens");

  write_file(dir + "/short.bin", raw.substr(0, 20));
  msg = error_of([&] { TokenShard::open(dir + "/short.bin"); });
  EXPECT_CONTAINS(msg, "short.bin");
  EXPECT_CONTAINS(msg, "header");

  std::string bad_magic = raw;
  bad_magic[0] = 'X';
  write_file(dir + "/magic.bin", bad_magic);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/magic.bin"); }), "not a token shard");

  std::string bad_version = raw;
  bad_version[8] = 2;
  write_file(dir + "/version.bin", bad_version);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/version.bin"); }), "version 2");

  std::string bad_width = raw;
  bad_width[12] = 3;
  write_file(dir + "/width.bin", bad_width);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/width.bin"); }), "bytes per token");

  std::string extra = raw + "xy";
  write_file(dir + "/extra.bin", extra);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/extra.bin"); }), "extra.bin");

  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/missing.bin"); }), "missing.bin");
  fs::remove_all(dir);
}

TEST(TokenShardTest, CheckVocab) {
  std::string dir = temp_dir("vocab");
  auto ids = iota_ids(50);
  ids[17] = 500;
  write_shard(dir + "/v.bin", ids);
  TokenShard s = TokenShard::open(dir + "/v.bin");
  EXPECT_NO_THROW(train::check_vocab(s, 501));
  std::string msg = error_of([&] { train::check_vocab(s, 500); });
  EXPECT_CONTAINS(msg, "token id 500 at position 17");
  EXPECT_CONTAINS(msg, "v.bin");
  EXPECT_CONTAINS(msg, "vocab size 500");
  fs::remove_all(dir);
}

// datatrove/nanotron .ds files: raw tokens; the width comes from .metadata, .index or the caller.
TEST(TokenShardTest, DatatroveDsFiles) {
  std::string dir = temp_dir("ds");
  std::vector<uint16_t> t16 = {5, 6, 7, 8, 9, 10};
  std::vector<uint32_t> t32 = {70000, 1, 2};
  write_file(dir + "/a.ds", std::string(reinterpret_cast<const char*>(t16.data()), t16.size() * 2));
  write_file(dir + "/a.ds.metadata", "gpt2\n6\n6T");
  write_file(dir + "/b.ds", std::string(reinterpret_cast<const char*>(t32.data()), t32.size() * 4));
  std::vector<uint64_t> ends = {1, 3};
  write_file(dir + "/b.ds.index", std::string(reinterpret_cast<const char*>(ends.data()), ends.size() * 8));
  write_file(dir + "/c.ds", std::string(reinterpret_cast<const char*>(t16.data()), t16.size() * 2));

  TokenShard a = TokenShard::open(dir + "/a.ds");
  EXPECT_EQ(a.bytes_per_token(), 2);
  EXPECT_EQ(a.size(), 6);
  EXPECT_EQ(a[5], 10);
  TokenShard b = TokenShard::open(dir + "/b.ds");
  EXPECT_EQ(b.bytes_per_token(), 4);
  EXPECT_EQ(b[0], 70000);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/c.ds"); }), "token size");
  TokenShard c = TokenShard::open(dir + "/c.ds", 4);
  EXPECT_EQ(c.size(), 3);
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/a.ds", 4); }), "implies 2");

  write_file(dir + "/d.ds", "abc");
  EXPECT_CONTAINS(error_of([&] { TokenShard::open(dir + "/d.ds", 2); }), "truncated");

  // A folder of .ds files is a source; windows stay inside one file.
  fs::create_directories(dir + "/folder");
  fs::copy_file(dir + "/a.ds", dir + "/folder/0.ds");
  fs::copy_file(dir + "/a.ds.metadata", dir + "/folder/0.ds.metadata");
  EXPECT_EQ(train::resolve_shards(dir + "/folder"), std::vector<std::string>{dir + "/folder/0.ds"});
  train::MixtureSampler s({{dir + "/folder", 1.0}}, 3, 2, 1);
  auto batch = s.next();
  for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(batch[i][3].item<int64_t>() - batch[i][0].item<int64_t>(), 3);
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------------------
// Preparation

class Prepare : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_dir("prepare");
    std::string text;
    for (int i = 0; i < 300; ++i)
      text += "In the beginning was the word number " + std::to_string(i) + ", and the word was good.\n";
    write_file(dir_ + "/tok-corpus.txt", text);
    tok::BpeTrainOptions o;
    o.vocab_size = 320;
    tok::BpeTrainer t(o);
    t.feed_file(dir_ + "/tok-corpus.txt");
    tok_ = tok::save_trained_tokenizer(dir_ + "/tok", t.train(), o);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::vector<int64_t> all_tokens(const std::string& path) {
    TokenShard s = TokenShard::open(path);
    std::vector<int64_t> v(size_t(s.size()));
    s.read(0, s.size(), v.data());
    return v;
  }

  // Documents "doc K: ..." as blank-line separated text, each with two lines.
  static std::string docs_text(int n) {
    std::string t;
    for (int k = 0; k < n; ++k) t += "doc " + std::to_string(k) + ": first line\nsecond line of " + std::to_string(k) + "\n\n";
    return t;
  }

  static std::string dir_, tok_;
};
std::string Prepare::dir_, Prepare::tok_;

TEST_F(Prepare, TextDocumentsWithEosAndDeterministicSplit) {
  write_file(dir_ + "/docs.txt", "\n\n" + docs_text(200) + "\n \n");
  train::PrepareOptions o;
  o.tokenizer = tok_;
  o.inputs = {dir_ + "/docs.txt"};
  o.out_dir = dir_ + "/out1";
  o.val_fraction = 0.2;
  o.seed = 5;
  auto r = train::prepare_data(o);
  const auto& m = r.meta;
  EXPECT_EQ(m["documents"]["train"].get<int64_t>() + m["documents"]["val"].get<int64_t>(), 200);
  EXPECT_GT(m["documents"]["val"].get<int64_t>(), 20);
  EXPECT_LT(m["documents"]["val"].get<int64_t>(), 60);
  EXPECT_EQ(m["dtype"], "uint16");
  EXPECT_EQ(m["vocab_size"], tok::Tokenizer::load(tok_).vocab_size());
  EXPECT_EQ(m["eos_id"], 0);
  auto meta_file = nlohmann::json::parse(slurp(dir_ + "/out1/meta.json"));
  EXPECT_EQ(meta_file, m);

  // Exactly: each document's ids then EOS, in input order, routed by is_val_document.
  tok::Tokenizer tok = tok::Tokenizer::load(tok_);
  std::vector<int64_t> want_train, want_val;
  for (int k = 0; k < 200; ++k) {
    std::string doc = "doc " + std::to_string(k) + ": first line\nsecond line of " + std::to_string(k);
    auto ids = tok.encode(doc, false);
    auto& dst = train::is_val_document(k, 5, 0.2) ? want_val : want_train;
    dst.insert(dst.end(), ids.begin(), ids.end());
    dst.push_back(0);
  }
  EXPECT_EQ(all_tokens(dir_ + "/out1/train.bin"), want_train);
  EXPECT_EQ(all_tokens(dir_ + "/out1/val.bin"), want_val);
  EXPECT_EQ(m["tokens"]["train"].get<size_t>(), want_train.size());

  // Same seed: identical files. Another seed: another split.
  o.out_dir = dir_ + "/out2";
  o.threads = 1;
  train::prepare_data(o);
  EXPECT_EQ(slurp(dir_ + "/out1/train.bin"), slurp(dir_ + "/out2/train.bin"));
  EXPECT_EQ(slurp(dir_ + "/out1/val.bin"), slurp(dir_ + "/out2/val.bin"));
  o.seed = 6;
  o.out_dir = dir_ + "/out3";
  train::prepare_data(o);
  EXPECT_NE(slurp(dir_ + "/out1/val.bin"), slurp(dir_ + "/out3/val.bin"));
}

TEST_F(Prepare, LineDocumentsJsonlAndValInputs) {
  write_file(dir_ + "/lines.txt", "one\ntwo\n\nthree\n");
  write_file(dir_ + "/docs.jsonl", "{\"text\": \"alpha\", \"id\": 1}\n\n{\"text\": \"beta\\ngamma\"}\n{\"text\": \"\"}\n");
  write_file(dir_ + "/other.json", "{\"body\": \"delta\"}\n");
  train::PrepareOptions o;
  o.tokenizer = tok_;
  o.inputs = {dir_ + "/lines.txt", dir_ + "/docs.jsonl"};
  o.val_inputs = {dir_ + "/lines.txt"};
  o.doc_sep = train::DocSep::Line;
  o.out_dir = dir_ + "/out-lines";
  auto m = train::prepare_data(o).meta;
  EXPECT_EQ(m["documents"]["train"], 5);  // one two three alpha "beta\ngamma"
  EXPECT_EQ(m["documents"]["val"], 3);
  EXPECT_EQ(m["sources"][1]["skipped_empty"], 1);
  tok::Tokenizer tok = tok::Tokenizer::load(tok_);
  std::vector<int64_t> want;
  for (const char* d : {"one", "two", "three", "alpha", "beta\ngamma"}) {
    auto ids = tok.encode(d, false);
    want.insert(want.end(), ids.begin(), ids.end());
    want.push_back(0);
  }
  EXPECT_EQ(all_tokens(dir_ + "/out-lines/train.bin"), want);

  // --jsonl-field: every input is JSONL, the text in that field.
  o.inputs = {dir_ + "/other.json"};
  o.val_inputs = {};
  o.jsonl_field = "body";
  o.out_dir = dir_ + "/out-field";
  EXPECT_EQ(train::prepare_data(o).meta["documents"]["train"], 1);
}

TEST_F(Prepare, Errors) {
  train::PrepareOptions o;
  o.tokenizer = tok_;
  o.out_dir = dir_ + "/out-err";

  write_file(dir_ + "/empty.txt", "\n  \n\n");
  o.inputs = {dir_ + "/empty.txt"};
  std::string msg = error_of([&] { train::prepare_data(o); });
  EXPECT_CONTAINS(msg, "no documents");
  EXPECT_CONTAINS(msg, "empty.txt");

  write_file(dir_ + "/bad-utf8.txt", "good\n\nstill good\nbad \xFF byte\n");
  o.inputs = {dir_ + "/bad-utf8.txt"};
  msg = error_of([&] { train::prepare_data(o); });
  EXPECT_CONTAINS(msg, "bad-utf8.txt:4");
  EXPECT_CONTAINS(msg, "UTF-8");

  write_file(dir_ + "/bad.jsonl", "{\"text\": \"x\"}\n{\"content\": \"y\"}\n");
  o.inputs = {dir_ + "/bad.jsonl"};
  msg = error_of([&] { train::prepare_data(o); });
  EXPECT_CONTAINS(msg, "bad.jsonl:2");
  EXPECT_CONTAINS(msg, "\"text\"");

  write_file(dir_ + "/broken.jsonl", "{\"text\": \"x\"\n");
  o.inputs = {dir_ + "/broken.jsonl"};
  EXPECT_CONTAINS(error_of([&] { train::prepare_data(o); }), "broken.jsonl:1: invalid JSON");

  o.inputs = {dir_ + "/nope.txt"};
  EXPECT_CONTAINS(error_of([&] { train::prepare_data(o); }), "nope.txt");

  // A tokenizer without <|endoftext|> or a configured eos_token needs --eos-id.
  tok::BpeTrainOptions to;
  to.vocab_size = 300;
  to.special_tokens = {"<pad>"};
  tok::BpeTrainer t(to);
  t.feed("some text to train on\n");
  std::string other = tok::save_trained_tokenizer(dir_ + "/tok-noeos", t.train(), to);
  fs::remove(dir_ + "/tok-noeos/tokenizer_config.json");
  write_file(dir_ + "/ok.txt", "hello\n");
  o.inputs = {dir_ + "/ok.txt"};
  o.tokenizer = other;
  EXPECT_CONTAINS(error_of([&] { train::prepare_data(o); }), "--eos-id");
  o.eos_id = 0;
  EXPECT_EQ(train::prepare_data(o).meta["eos_id"], 0);
  o.eos_id = 300;
  EXPECT_CONTAINS(error_of([&] { train::prepare_data(o); }), "outside");
}

// ------------------------------------------------------------------------------------------------
// Sampling

class Sampling : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = temp_dir("sampling");
    fs::create_directories(dir_ + "/a");
    fs::create_directories(dir_ + "/b");
    write_shard(dir_ + "/a/train.bin", iota_ids(5000, 0));      // source A: ids 0..4999
    write_shard(dir_ + "/a/val.bin", iota_ids(101, 0));
    write_shard(dir_ + "/b/part-0.bin", iota_ids(3000, 10000));  // source B: two shards, ids >= 10000
    write_shard(dir_ + "/b/part-1.bin", iota_ids(3000, 20000));
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(Sampling, MixtureWindowsAndWeights) {
  train::MixtureSampler s({{dir_ + "/a", 3.0}, {dir_ + "/b", 1.0}}, 16, 8, 42);
  EXPECT_EQ(s.num_sources(), 2);
  EXPECT_EQ(s.source_tokens(1), 6000);
  int64_t from_a = 0, n = 0;
  for (int step = 0; step < 200; ++step) {
    auto b = s.next();
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{8, 17}));
    ASSERT_EQ(b.scalar_type(), torch::kInt64);
    for (int64_t i = 0; i < 8; ++i) {
      auto row = b[i];
      int64_t first = row[0].item<int64_t>();
      // A window is contiguous inside one shard.
      ASSERT_TRUE(torch::equal(row, torch::arange(first, first + 17, torch::kInt64))) << row;
      from_a += first < 10000;
      ++n;
    }
  }
  EXPECT_NEAR(double(from_a) / double(n), 0.75, 0.04);
  EXPECT_NO_THROW(s.check_vocab(30000));
  EXPECT_CONTAINS(error_of([&] { s.check_vocab(20000); }), "part-1.bin");
}

TEST_F(Sampling, DeterministicAndResumable) {
  std::vector<train::DataSource> src = {{dir_ + "/a", 1.0}, {dir_ + "/b", 2.0}};
  train::MixtureSampler s1(src, 8, 4, 7), s2(src, 8, 4, 7), other(src, 8, 4, 8);
  std::vector<torch::Tensor> run;
  for (int i = 0; i < 10; ++i) run.push_back(s1.next());
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(torch::equal(run[size_t(i)], s2.next()));
  EXPECT_FALSE(torch::equal(run[0], other.next()));

  // Resume at step 6 in a fresh sampler.
  train::MixtureSampler r1(src, 8, 4, 7);
  for (int i = 0; i < 6; ++i) r1.next();
  auto state = train::SamplerState::from_json(r1.state().to_json());
  EXPECT_EQ(state.step, 6);
  train::MixtureSampler r2(src, 8, 4, 0);
  r2.set_state(state);
  for (int i = 6; i < 10; ++i) EXPECT_TRUE(torch::equal(r2.next(), run[size_t(i)]));
  EXPECT_TRUE(torch::equal(s1.batch_at(3), run[3]));
}

TEST_F(Sampling, RanksDrawDisjointSamples) {
  std::vector<train::DataSource> src = {{dir_ + "/a", 1.0}, {dir_ + "/b", 1.0}};
  // World of 2 ranks x 4 samples = one rank drawing 8: same samples, split between ranks.
  train::MixtureSampler r0(src, 8, 4, 3, 0, 2), r1(src, 8, 4, 3, 1, 2), single(src, 8, 8, 3);
  for (int step = 0; step < 5; ++step) {
    auto both = torch::cat({r0.batch_at(step), r1.batch_at(step)});
    EXPECT_TRUE(torch::equal(both, single.batch_at(step)));
  }
  for (int64_t i = 0; i < 4; ++i) {
    auto d0 = r0.draw(i), d1 = r0.draw(4 + i);
    EXPECT_FALSE(d0.source == d1.source && d0.shard == d1.shard && d0.start == d1.start);
  }
  EXPECT_THROW(train::MixtureSampler(src, 8, 4, 3, 2, 2), Error);
}

TEST_F(Sampling, TooShortDataIsAnError) {
  write_shard(dir_ + "/tiny.bin", iota_ids(10));
  std::string msg = error_of([&] { train::MixtureSampler({{dir_ + "/tiny.bin", 1.0}}, 10, 1, 0); });
  EXPECT_CONTAINS(msg, "data has 10 tokens, need at least seq_len+1 = 11");
  EXPECT_CONTAINS(msg, "tiny.bin");
  EXPECT_NO_THROW(train::MixtureSampler({{dir_ + "/tiny.bin", 1.0}}, 9, 1, 0));
  msg = error_of([&] { train::SequentialBatches(dir_ + "/tiny.bin", 10, 1); });
  EXPECT_CONTAINS(msg, "data has 10 tokens, need at least seq_len+1 = 11");
  EXPECT_THROW(train::MixtureSampler({{dir_ + "/a", 0.0}}, 8, 1, 0), Error);
  EXPECT_THROW(train::MixtureSampler({{dir_ + "/nothing", 1.0}}, 8, 1, 0), Error);
}

TEST_F(Sampling, SequentialValidationWindows) {
  // val.bin holds 101 tokens: windows of 10+1 starting at 0, 10, ..., 90 (every token after the first a target once).
  train::SequentialBatches v(dir_ + "/a", 10, 4);
  EXPECT_EQ(v.num_windows(), 10);
  std::vector<int64_t> starts;
  torch::Tensor b;
  std::vector<int64_t> sizes;
  while (v.next(b)) {
    sizes.push_back(b.size(0));
    ASSERT_EQ(b.size(1), 11);
    for (int64_t i = 0; i < b.size(0); ++i) {
      int64_t first = b[i][0].item<int64_t>();
      EXPECT_TRUE(torch::equal(b[i], torch::arange(first, first + 11, torch::kInt64)));
      starts.push_back(first);
    }
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_EQ(starts, (std::vector<int64_t>{0, 10, 20, 30, 40, 50, 60, 70, 80, 90}));
  v.reset();
  ASSERT_TRUE(v.next(b));
  EXPECT_EQ(b[0][0].item<int64_t>(), 0);

  train::SequentialBatches first3(dir_ + "/a", 10, 8, 3);
  EXPECT_EQ(first3.num_windows(), 3);
  train::SequentialBatches rank1(dir_ + "/a", 10, 8, -1, 1, 3);
  ASSERT_TRUE(rank1.next(b));
  EXPECT_EQ(b.size(0), 3);  // windows 1, 4, 7
  EXPECT_EQ(b[2][0].item<int64_t>(), 70);
}

TEST_F(Sampling, ResolveShards) {
  EXPECT_EQ(train::resolve_shards(dir_ + "/a"), std::vector<std::string>{dir_ + "/a/train.bin"});
  EXPECT_EQ(train::resolve_shards(dir_ + "/a", "val"), std::vector<std::string>{dir_ + "/a/val.bin"});
  EXPECT_EQ(train::resolve_shards(dir_ + "/b"),
            (std::vector<std::string>{dir_ + "/b/part-0.bin", dir_ + "/b/part-1.bin"}));
  fs::create_directories(dir_ + "/none");
  EXPECT_CONTAINS(error_of([&] { train::resolve_shards(dir_ + "/none"); }), "no token shards");
}

}  // namespace
