// mha2mla data: tokenize text/JSONL documents into train/val token shards.
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/cli.h"
#include "train/data.h"
#include "util/error.h"
#include "util/progress.h"

namespace mha2mla::cli {

namespace {

constexpr const char* kUsage =
    "usage: mha2mla data --tokenizer PATH --in FILE... --out DIR [--val-in FILE...] [--val-fraction F]\n"
    "                    [--jsonl-field NAME] [--doc-sep blank|line] [--seed S] [--eos-id ID]\n"
    "                    [--threads N] [--json]\n\n"
    "Tokenizes documents (without special tokens), appends EOS after each, and writes DIR/train.bin,\n"
    "DIR/val.bin (M2MLTOK1 shards: 32-byte header, then uint16 ids when the vocab fits, else uint32)\n"
    "and DIR/meta.json.\n\n"
    "  --tokenizer PATH     tokenizer.json, or a folder holding one\n"
    "  --in FILE...         inputs: plain UTF-8 text, or JSONL (files ending in .jsonl, or all with --jsonl-field)\n"
    "  --out DIR            output folder (created if missing)\n"
    "  --val-in FILE...     inputs whose documents all go to val\n"
    "  --val-fraction F     fraction of --in documents held out for val, chosen by a hash of the\n"
    "                       document index and --seed (default 0.01; 0 when --val-in is given)\n"
    "  --jsonl-field NAME   JSON field holding the text (default \"text\")\n"
    "  --doc-sep blank|line plain text: documents are separated by blank lines (default) or are single lines\n"
    "  --seed S             split seed (default 0)\n"
    "  --eos-id ID          EOS id (default: the tokenizer's <|endoftext|>, else tokenizer_config.json's eos_token)\n"
    "  --threads N          tokenizer threads (default: all cores)\n"
    "  --json               print meta.json as one line\n";

}  // namespace

int cmd_data(const Args& a) {
  if (a.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  a.validate({"tokenizer", "in", "out", "val-in", "val-fraction", "jsonl-field", "doc-sep", "seed", "eos-id", "threads"},
             {"json"});
  train::PrepareOptions o;
  o.tokenizer = a.require("tokenizer");
  o.inputs = a.get_all("in");
  o.val_inputs = a.get_all("val-in");
  check(!o.inputs.empty(), "data: missing --in (see mha2mla data --help)");
  check(!a.flag("val-in") || !o.val_inputs.empty(), "--val-in needs at least one file");
  o.out_dir = a.require("out");
  o.val_fraction = a.get_double("val-fraction", o.val_inputs.empty() ? 0.01 : 0.0);
  check(o.val_fraction >= 0 && o.val_fraction <= 1, "--val-fraction must be in [0, 1]");
  if (auto f = a.get("jsonl-field")) o.jsonl_field = *f;
  std::string sep = a.get_or("doc-sep", "blank");
  check(sep == "blank" || sep == "line", "--doc-sep must be blank or line, got \"" + sep + "\"");
  o.doc_sep = sep == "line" ? train::DocSep::Line : train::DocSep::Blank;
  long long seed = a.get_int("seed", 0);
  check(seed >= 0, "--seed must be non-negative");
  o.seed = uint64_t(seed);
  if (a.flag("eos-id")) o.eos_id = a.get_int("eos-id", -1);
  o.threads = int(a.get_int("threads", 0));

  std::unique_ptr<Progress> bar;  // the total is known once the inputs are opened
  auto r = train::prepare_data(o, [&](int64_t done, int64_t total) {
    if (!bar) bar = std::make_unique<Progress>("data", total);
    bar->update(done);
  });
  if (bar) bar->finish();
  const auto& m = r.meta;
  if (a.flag("json")) {
    nlohmann::json j = m;
    j["out"] = o.out_dir;
    j["seconds"] = r.seconds;
    std::cout << j.dump() << "\n";
  } else {
    std::printf("wrote %s: train %lld tokens (%lld docs), val %lld tokens (%lld docs), vocab %lld, %s, eos %lld  (%.1fs)\n",
                o.out_dir.c_str(), m["tokens"]["train"].get<long long>(), m["documents"]["train"].get<long long>(),
                m["tokens"]["val"].get<long long>(), m["documents"]["val"].get<long long>(),
                m["vocab_size"].get<long long>(), m["dtype"].get<std::string>().c_str(), m["eos_id"].get<long long>(),
                r.seconds);
  }
  return 0;
}

}  // namespace mha2mla::cli
