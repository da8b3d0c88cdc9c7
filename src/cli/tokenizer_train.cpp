// mha2mla tokenizer-train: learn a byte-level BPE tokenizer from text files.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/cli.h"
#include "cli/options.h"
#include "tokenizer/bpe_train.h"
#include "util/error.h"
#include "util/progress.h"

namespace mha2mla::cli {

int cmd_tokenizer_train(const Args& a) {
  std::vector<std::string> inputs;
  std::string out;
  tok::BpeTrainOptions opts;
  int64_t vocab = 0, min_freq = opts.min_frequency, max_len = opts.model_max_length;
  bool json = false;
  OptionTable t("tokenizer-train", "--in FILE... --vocab-size N --out PATH [options]",
                "Trains a GPT-2-style byte-level BPE tokenizer (like HF ByteLevelBPETokenizer) and saves a standard\n"
                "tokenizer.json plus tokenizer_config.json. The alphabet is all 256 bytes, so any text encodes.\n"
                "Merges: most frequent adjacent pair first, ties to the lowest token ids; deterministic.");
  t.multi("in", "FILE...", "UTF-8 text files, read line by line", [&](auto& v) { inputs = v; }, true)
      .required("vocab-size", "N", "total vocabulary size, special tokens included (>= 256 + specials)",
                [&](auto& v) {
                  vocab = parse_int("vocab-size", v);
                  check(vocab > 0, "--vocab-size must be positive");
                  check(vocab <= (1LL << 31) - 1, "--vocab-size is too large");
                })
      .required("out", "PATH",
                "FILE.json to write, or a folder (created if missing) to write tokenizer.json\n"
                "into; tokenizer_config.json goes next to it",
                [&](auto& v) { out = v; })
      .integer("min-frequency", "F", "stop when no pair occurs F times", min_freq, 1)
      .multi("special", "TOKEN...", "special tokens, ids 0.. in order", [&](auto& v) { opts.special_tokens = v; },
             false, "<|endoftext|>")
      .integer("model-max-length", "L", "model_max_length in tokenizer_config.json", max_len, 1)
      .toggle("json", "print one JSON object with the training statistics", json);
  if (!t.parse(a)) return 0;
  opts.vocab_size = static_cast<int32_t>(vocab);
  opts.min_frequency = min_freq;
  opts.model_max_length = max_len;

  tok::BpeTrainer trainer(opts);
  for (const auto& path : inputs) {
    std::error_code ec;
    auto size = std::filesystem::file_size(path, ec);
    Progress bar("count " + path, ec ? 0 : int64_t(size));
    trainer.feed_file(path, [&](int64_t done, int64_t total) { bar.update(done); });
    bar.finish();
  }
  check(trainer.stats().bytes > 0, "input is empty: " + [&] {
    std::string s;
    for (const auto& p : inputs) s += (s.empty() ? "" : " ") + p;
    return s;
  }());
  Progress bar("merge", opts.vocab_size);
  auto tokenizer = trainer.train([&](int32_t done, int32_t) { bar.update(done); });
  bar.finish();
  std::string file = tok::save_trained_tokenizer(out, tokenizer, opts);
  const auto& s = trainer.stats();
  if (json) {
    nlohmann::json j{{"tokenizer", file},           {"vocab_size", s.vocab_size},
                     {"merges", s.merges},          {"reached_vocab_size", s.reached_vocab_size},
                     {"lines", s.lines},            {"bytes", s.bytes},
                     {"words", s.words},            {"unique_words", s.unique_words},
                     {"count_seconds", s.count_seconds}, {"merge_seconds", s.merge_seconds}};
    std::cout << j.dump() << "\n";
  } else {
    std::printf("wrote %s: vocab %d (%d merges%s)  from %lld lines, %lld bytes, %lld unique words  (count %.2fs, merge %.2fs)\n",
                file.c_str(), s.vocab_size, s.merges,
                s.reached_vocab_size ? "" : "; stopped early: no pair reaches --min-frequency",
                static_cast<long long>(s.lines), static_cast<long long>(s.bytes),
                static_cast<long long>(s.unique_words), s.count_seconds, s.merge_seconds);
  }
  return 0;
}

}  // namespace mha2mla::cli
