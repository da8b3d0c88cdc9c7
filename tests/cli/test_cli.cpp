// The mha2mla binary as users and scripts run it: contracts, JSON output, and one-line errors.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "io/safetensors.h"
#include "model/transformer.h"
#include "testing/byte_tokenizer.h"
#include "testing/tiny_model.h"
#include "tokenizer/tokenizer.h"

using namespace mha2mla;
namespace fs = std::filesystem;

namespace {

using testutil::expect_one_line_error;
using testutil::run_cli;

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testutil::temp_dir("cli-model");
    auto cfg = testutil::tiny_config("llama-gqa");
    cfg["vocab_size"] = 262;
    cfg["bos_token_id"] = 0;
    cfg["eos_token_id"] = 0;
    auto m = testutil::make_random_model(cfg, 21);
    model::save_model(*m, dir_);
    std::ofstream(dir_ + "/tokenizer.json") << testutil::byte_level_tokenizer_json().dump();
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string dir_;
};
std::string Cli::dir_;

TEST_F(Cli, HelpOnEverySubcommand) {
  for (const char* c : {"inspect", "tokenize", "ppl", "generate", "convert", "calibrate", "train", "finetune", "data",
                        "tokenizer-train", "init", "cast", "bench", "eval", "reproduce"}) {
    auto r = run_cli(std::string(c) + " --help");
    EXPECT_EQ(r.code, 0) << c;
    EXPECT_NE(r.out.find("usage: mha2mla " + std::string(c)), std::string::npos) << r.out;
  }
  auto r = run_cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("commands:"), std::string::npos);
}

// Help, validation and parsing come from one table per command: every option the help lists is accepted,
// and one the help does not list is refused.
TEST_F(Cli, HelpListsExactlyTheAcceptedOptions) {
  auto h = run_cli("generate --help");
  ASSERT_EQ(h.code, 0);
  for (const char* o : {"--model", "--prompt", "--max-new", "--device", "--dtype", "--cache-type", "--cache-residual",
                        "--cache-group", "--cache-axis", "--cache-type-kr", "--attn", "--json"})
    EXPECT_NE(h.out.find(std::string("  ") + o), std::string::npos) << o;
  EXPECT_NE(h.out.find("(default: 128)"), std::string::npos);  // defaults are shown from the table
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --chunk 4"), "unknown option --chunk");
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --cache-type int3"), "unknown cache type");
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --device tpu"), "unknown device");
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --json 1"), "--json takes no value");
  expect_one_line_error(run_cli("generate --model " + dir_), "missing --prompt");
  // A per-channel key axis needs a residual that is a multiple of the group: refused before any work.
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --cache-type int4 --cache-residual 100"),
                        "multiple of --cache-group");
  if (!torch::cuda::is_available())
    expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --device cuda"), "no CUDA device");
}

// generate and ppl report the cache exactly; the bytes match inspect's per-token formula for quantized tokens.
TEST_F(Cli, CacheReportMatchesTheFormula) {
  auto g = run_cli("generate --json --model " + dir_ +
                   " --prompt 'the thread and the needle' --max-new 40 --cache-type int4 --cache-residual 16 --cache-group 16");
  ASSERT_EQ(g.code, 0) << g.err;
  auto j = nlohmann::json::parse(g.out);
  const int64_t tokens = j["cache_tokens"].get<int64_t>(), res = j["cache_residual_tokens"].get<int64_t>();
  EXPECT_EQ(tokens, j["prompt_tokens"].get<int64_t>() + j["new_tokens"].get<int64_t>() - 1);
  EXPECT_EQ(res, tokens % 16);
  auto ins = run_cli("inspect --json --model " + dir_ + " --cache-type int4 --cache-group 16 --cache-residual 16");
  ASSERT_EQ(ins.code, 0) << ins.err;
  const double per_token = nlohmann::json::parse(ins.out)["kv_cache_bytes_per_token"].get<double>();
  auto cfg = nlohmann::json::parse(ins.out)["config"];
  const int64_t layers = cfg["num_hidden_layers"], kv = cfg["num_key_value_heads"];
  const int64_t d_h = cfg["hidden_size"].get<int64_t>() / cfg["num_attention_heads"].get<int64_t>();
  // Residual tokens are held in f32: 2 buffers × n_kv × d_h × 4 bytes per layer.
  EXPECT_DOUBLE_EQ(j["cache_bytes"].get<double>(), per_token * (tokens - res) + res * layers * 2 * kv * d_h * 4);
  EXPECT_GE(j["cache_capacity_bytes"].get<int64_t>(), j["cache_bytes"].get<int64_t>());
  auto p = run_cli("ppl --json --model " + dir_ + " --text " + dir_ + "/config.json --ctx 32 --cache-type int8");
  ASSERT_EQ(p.code, 0) << p.err;
  auto pj = nlohmann::json::parse(p.out);
  EXPECT_EQ(pj["chunk"], 64);  // a --cache-* flag turns the chunked path on
  EXPECT_GT(pj["cache_bytes"].get<int64_t>(), 0);
}

TEST_F(Cli, BenchWritesJsonMarkdownAndPlot) {
  const std::string prefix = testutil::temp_dir("bench") + "/b";
  auto r = run_cli("bench --model " + dir_ + " --cache-types f32,int8 --contexts 16,32 --batch 1,2 --steps 2 --dtype f32 "
                   "--cache-residual 16 --cache-group 16 --out " + prefix + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["read_bandwidth_gbs"].get<double>(), 0);
  EXPECT_GT(j["matmul_gflops"]["bf16"].get<double>(), 0);
  ASSERT_EQ(j["cells"].size(), 8u);  // 2 cache types × 2 contexts × 2 batches
  for (const auto& c : j["cells"]) {
    for (const char* k : {"model", "cache_type", "context", "batch", "kv_bytes_per_token", "prefill_tokens_per_s",
                          "decode_tokens_per_s", "attn_step_ms", "attn_gbs"})
      EXPECT_TRUE(c.contains(k)) << k;
    EXPECT_GT(c["decode_tokens_per_s"].get<double>(), 0);
    EXPECT_GT(c["attn_step_ms"].get<double>(), 0);
  }
  // int8 tokens cost a quarter of f32 plus the scales.
  EXPECT_LT(j["cells"][4]["kv_bytes_per_token"].get<double>(), j["cells"][0]["kv_bytes_per_token"].get<double>() / 3);
  for (const char* ext : {".json", ".md", ".svg"}) EXPECT_TRUE(fs::exists(prefix + ext)) << ext;
  expect_one_line_error(run_cli("bench --shape gpt5"), "unknown shape");
  expect_one_line_error(run_cli("bench --models mla-50.3"), "whole latent rank");
  fs::remove_all(fs::path(prefix).parent_path());
}

TEST_F(Cli, ReproduceWritesRowsResumesAndChecksItsInput) {
  const std::string d = testutil::temp_dir("reproduce");
  {
    std::ofstream t(d + "/text.txt");
    for (int i = 0; i < 60; ++i)
      t << "In the beginning " << i << " the words were few, and the verses were short and plain.\n\n";
    std::ofstream mc(d + "/mc.jsonl");
    mc << R"({"query": "the words were", "choices": [" few", " many"], "gold_index": 0})" "\n"
       << R"({"query": "the verses were", "choices": [" long", " short"], "gold_index": 1})" "\n";
    std::ofstream r(d + "/ret.jsonl");
    r << R"({"_id": "a", "dataset": "kjv_retrieval", "input": "Which? Paragraph", "context": "Paragraph 1: few\n\n",)"
         R"( "answers": ["Paragraph 1"], "length": 4, "all_classes": null})" "\n";
  }
  auto prep = run_cli("data --tokenizer " + dir_ + " --in " + d + "/text.txt --val-in " + d + "/text.txt --out " + d +
                      "/shards --json");
  ASSERT_EQ(prep.code, 0) << prep.err;
  const std::string common = "reproduce --model " + dir_ + " --out " + d + "/out --data " + d + "/shards --val " + d +
                             "/shards --calib-text " + d + "/text.txt --val-text " + d + "/text.txt --mc " + d +
                             "/mc.jsonl --retrieval " + d + "/ret.jsonl --rope-dims 2 --batch 2 --seq-len 32 --ctx 64 "
                             "--stride 32 --calib-samples 4 --only baseline ladder-81.25-int4 --json";
  auto r = run_cli(common + " --steps 2");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["rows"].size(), 3u);  // the int4 row brings the row it measures again
  std::map<std::string, nlohmann::json> rows;
  for (const auto& x : j["rows"]) rows[x["id"].get<std::string>()] = x;
  ASSERT_TRUE(rows.count("baseline") && rows.count("ladder-81.25") && rows.count("ladder-81.25-int4"));
  EXPECT_EQ(rows["baseline"]["kv_reduction"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(rows["ladder-81.25"]["kv_reduction"].get<double>(), 0.8125);
  // 4.5 bits per value (4 + an f16 scale and zero per 64) against 16.
  EXPECT_NEAR(rows["ladder-81.25-int4"]["kv_reduction"].get<double>(), 1 - 0.1875 * 4.5 / 16, 1e-12);
  EXPECT_FALSE(rows["ladder-81.25-int4"].contains("kjv_mc"));  // a log-likelihood forward reads no cache
  for (const auto& [id, x] : rows) {
    EXPECT_GT(x["ppl_after"].get<double>(), 1.0) << id;
    EXPECT_TRUE(x.contains("kjv_retrieval")) << id;
  }
  EXPECT_NE(rows["ladder-81.25"]["ppl_before"], rows["ladder-81.25"]["ppl_after"]);  // it was fine-tuned
  for (const char* f : {"reproduce.json", "reproduce.md", "reproduce.svg", "rows/baseline.json", "calib.safetensors"})
    EXPECT_TRUE(fs::exists(d + "/out/" + f)) << f;
  // A second run with the same settings keeps every row; other settings measure them again.
  auto again = run_cli(common + " --steps 2");
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out)["rows"], j["rows"]);
  EXPECT_NE(again.err.find("baseline: kept from an earlier run"), std::string::npos) << again.err;
  auto other = run_cli(common + " --steps 3");
  ASSERT_EQ(other.code, 0) << other.err;
  EXPECT_EQ(other.err.find("kept from an earlier run"), std::string::npos) << other.err;
  expect_one_line_error(run_cli(common + " --steps 2 --only ladder-50"), "unknown row \"ladder-50\"");
  expect_one_line_error(run_cli(common + " --steps 2 --rope-dims 8"), "not reachable with --rope-dims 8");
  expect_one_line_error(run_cli(common + " --steps 2 --mc " + d + "/missing.jsonl"), "missing.jsonl");
  fs::remove_all(d);
}

TEST_F(Cli, InspectJson) {
  auto r = run_cli("inspect --json --model " + dir_);
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["num_key_value_heads"], 2);
  EXPECT_EQ(j["config"]["model_type"], "llama");
  auto ckpt = io::Checkpoint::open(dir_);
  EXPECT_EQ(j["tensors"].size(), ckpt.names().size());
  bool found = false;
  for (const auto& t : j["tensors"])
    if (t["name"] == "model.layers.1.self_attn.k_proj.weight") {
      found = true;
      EXPECT_EQ(t["dtype"], "F32");
      EXPECT_EQ(t["shape"], nlohmann::json({32, 64}));
    }
  EXPECT_TRUE(found);
  auto h = run_cli("inspect --model " + dir_);
  EXPECT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("(GQA)"), std::string::npos);
}

// cast with a new context length: the config fields change, the weights (cast back to f32) do not, and a
// sequence past the old limit now runs.
TEST_F(Cli, CastExtendsTheContext) {
  const std::string out = testutil::temp_dir("cli-cast") + "/long";
  auto r = run_cli("cast --model " + dir_ + " --out " + out + " --dtype f32 --max-positions 4096 --rope-theta 50000");
  ASSERT_EQ(r.code, 0) << r.err;
  auto src = io::ModelConfig::load(dir_), dst = io::ModelConfig::load(out);
  EXPECT_EQ(dst.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(dst.rope_theta, 50000.0);
  EXPECT_NE(src.max_position_embeddings, 4096);
  EXPECT_EQ(dst.num_layers, src.num_layers);
  auto a = io::Checkpoint::open(dir_), b = io::Checkpoint::open(out);
  for (const auto& n : a.names()) EXPECT_TRUE(torch::equal(a.get_float(n), b.get_float(n))) << n;
  auto m = model::load_model(out, torch::kFloat32);
  torch::NoGradGuard ng;
  auto logits = m->forward(torch::zeros({1, src.max_position_embeddings + 8}, torch::kInt64));
  EXPECT_EQ(logits.size(1), src.max_position_embeddings + 8);
  expect_one_line_error(run_cli("cast --model " + dir_ + " --out " + out + "2 --dtype f32 --rope-theta -1"),
                        "--rope-theta");
  EXPECT_FALSE(fs::exists(out + "2"));
  fs::remove_all(fs::path(out).parent_path());
}

TEST_F(Cli, TokenizeMatchesLibraryPerLine) {
  std::string in = dir_ + "/lines.txt";
  std::ofstream(in) << "hello there\n\nthe three  others, 42\n";
  auto r = run_cli("tokenize --tokenizer " + dir_, in);
  ASSERT_EQ(r.code, 0) << r.err;
  auto tok = tok::Tokenizer::load(dir_);
  std::vector<std::string> lines{"hello there", "", "the three  others, 42"};
  std::istringstream out(r.out);
  std::string line;
  for (const auto& l : lines) {
    ASSERT_TRUE(std::getline(out, line));
    EXPECT_EQ(nlohmann::json::parse(line).get<std::vector<int32_t>>(), tok.encode(l, false)) << l;
  }
  std::ofstream(in) << "ok\n\xff\xfe bad\n";
  expect_one_line_error(run_cli("tokenize --tokenizer " + dir_, in), "line 2");
}

TEST_F(Cli, PplMatchesPyTorchSlidingWindow) {
  MHA2MLA_REQUIRE_ORACLE(testutil::python_has_torch(), "Debian python3 with torch not found");
  std::string text;
  for (int i = 0; i < 12; ++i) text += "In the beginning there was a thin thread of thought, " + std::to_string(i) + ".\n";
  std::ofstream(dir_ + "/text.txt") << text;
  auto ids = tok::Tokenizer::load(dir_).encode(text, true);
  ASSERT_GT(ids.size(), 300u);
  std::ofstream(dir_ + "/ids.json") << nlohmann::json(ids).dump();
  for (auto [ctx, stride] : std::vector<std::pair<int, int>>{{128, 128}, {128, 48}, {100, 1000}}) {
    if (stride > ctx) stride = ctx;
    auto r = run_cli("ppl --json --model " + dir_ + " --text " + dir_ + "/text.txt --ctx " + std::to_string(ctx) +
                 " --stride " + std::to_string(stride));
    ASSERT_EQ(r.code, 0) << r.err;
    auto ours = nlohmann::json::parse(r.out);
    std::string cmd = testutil::debian_python() + " " MHA2MLA_SOURCE_DIR "/tests/oracle/torch_ref.py --threads 2 --model " +
                      dir_ + " --ppl-ids " + dir_ + "/ids.json --ctx " + std::to_string(ctx) + " --stride " +
                      std::to_string(stride) + " > " + dir_ + "/ref.json";
    ASSERT_EQ(testutil::run(cmd), 0);
    std::ifstream f(dir_ + "/ref.json");
    auto ref = nlohmann::json::parse(f);
    EXPECT_EQ(ours["tokens"].get<int64_t>(), static_cast<int64_t>(ids.size()) - 1);
    EXPECT_EQ(ours["tokens"], ref["tokens"]);
    EXPECT_NEAR(ours["nll"].get<double>(), ref["nll"].get<double>(), 1e-5) << "ctx " << ctx << " stride " << stride;
    EXPECT_NEAR(ours["ppl"].get<double>(), std::exp(ours["nll"].get<double>()), 1e-9);
  }
}

TEST_F(Cli, GenerateGreedyIsDeterministicAndStreams) {
  auto a = run_cli("generate --json --model " + dir_ + " --prompt 'the thread' --max-new 12");
  ASSERT_EQ(a.code, 0) << a.err;
  auto j = nlohmann::json::parse(a.out);
  EXPECT_GE(j["new_tokens"].get<int>(), 1);
  EXPECT_LE(j["new_tokens"].get<int>(), 12);
  auto b = run_cli("generate --json --model " + dir_ + " --prompt 'the thread' --max-new 12");
  EXPECT_EQ(nlohmann::json::parse(b.out)["tokens"], j["tokens"]);
  auto s = run_cli("generate --model " + dir_ + " --prompt 'the thread' --max-new 12 --temperature 0.8 --top-p 0.9 --seed 3");
  EXPECT_EQ(s.code, 0) << s.err;
  EXPECT_NE(s.err.find("tokens/s"), std::string::npos);
}

TEST_F(Cli, BadInputGivesOneLineErrors) {
  expect_one_line_error(run_cli("inspect"), "missing --model");
  expect_one_line_error(run_cli("inspect --model /nonexistent/dir"), "/nonexistent/dir");
  expect_one_line_error(run_cli("inspect --model " + dir_ + " --bogus 1"), "unknown option --bogus");
  expect_one_line_error(run_cli("ppl --model " + dir_ + " --text /nonexistent.txt"), "/nonexistent.txt");
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --top-p 1.5"), "--top-p");
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt hi --max-new x"), "--max-new");
  expect_one_line_error(run_cli("ppl --model " + dir_ + " --text " + dir_ + "/config.json --dtype f8"), "unknown dtype");
  // A prompt longer than max_position_embeddings (128 here).
  std::string long_prompt(400, 'z');
  for (size_t i = 1; i < long_prompt.size(); i += 2) long_prompt[i] = ' ';
  expect_one_line_error(run_cli("generate --model " + dir_ + " --prompt '" + long_prompt + "'"), "max_position_embeddings");
  // Truncated weights.
  auto bad = testutil::temp_dir("cli-bad");
  fs::copy(dir_, bad, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  fs::resize_file(bad + "/model.safetensors", fs::file_size(bad + "/model.safetensors") / 2);
  expect_one_line_error(run_cli("generate --model " + bad + " --prompt hi"), "model.safetensors");
  // Unsupported architecture.
  auto cfg = nlohmann::json::parse(std::ifstream(dir_ + "/config.json"));
  cfg["model_type"] = "gpt2";
  std::ofstream(bad + "/config.json") << cfg.dump();
  expect_one_line_error(run_cli("inspect --model " + bad), "unsupported architecture");
  fs::remove_all(bad);
  expect_one_line_error(run_cli("frobnicate"), "unknown command");
}

}  // namespace
