// mha2mla data: tokenize text/JSONL documents into train/val token shards.
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/cli.h"
#include "cli/options.h"
#include "train/data.h"
#include "util/error.h"
#include "util/progress.h"

namespace mha2mla::cli {

int cmd_data(const Args& a) {
  train::PrepareOptions o;
  bool json = false;
  double val_fraction = -1;
  int64_t seed = 0, threads = 0;
  std::string sep = "blank";
  OptionTable t("data", "--tokenizer PATH --in FILE... --out DIR [options]",
                "Tokenizes documents (without special tokens), appends EOS after each, and writes DIR/train.bin,\n"
                "DIR/val.bin (M2MLTOK1 shards: 32-byte header, then uint16 ids when the vocab fits, else uint32)\n"
                "and DIR/meta.json.");
  t.required("tokenizer", "PATH", "tokenizer.json, or a folder holding one", [&](auto& v) { o.tokenizer = v; })
      .multi("in", "FILE...", "inputs: plain UTF-8 text, or JSONL (files ending in .jsonl, or all with --jsonl-field)",
             [&](auto& v) { o.inputs = v; }, true)
      .required("out", "DIR", "output folder (created if missing)", [&](auto& v) { o.out_dir = v; })
      .multi("val-in", "FILE...", "inputs whose documents all go to val", [&](auto& v) { o.val_inputs = v; })
      .number("val-fraction", "F",
              "fraction of --in documents held out for val, chosen by a hash of the\n"
              "document index and --seed",
              val_fraction, "0.01; 0 when --val-in is given")
      .value("jsonl-field", "NAME", "JSON field holding the text", [&](auto& v) { o.jsonl_field = v; }, "text")
      .value("doc-sep", "S", "blank | line: plain-text documents are separated by blank lines or are single lines",
             [&](auto& v) { sep = parse_choice("doc-sep", v, {"blank", "line"}); }, "blank")
      .integer("seed", "S", "split seed", seed, 0)
      .value("eos-id", "ID", "EOS id", [&](auto& v) { o.eos_id = parse_int("eos-id", v); },
             "the tokenizer's <|endoftext|>, else tokenizer_config.json's eos_token")
      .integer("threads", "N", "tokenizer threads", threads, 0, "all cores")
      .toggle("json", "print meta.json as one line", json);
  if (!t.parse(a)) return 0;
  if (val_fraction < 0) val_fraction = o.val_inputs.empty() ? 0.01 : 0.0;
  usage_check(val_fraction <= 1, "--val-fraction must be in [0, 1]");
  o.val_fraction = val_fraction;
  o.doc_sep = sep == "line" ? train::DocSep::Line : train::DocSep::Blank;
  o.seed = static_cast<uint64_t>(seed);
  o.threads = static_cast<int>(threads);

  std::unique_ptr<Progress> bar;  // the total is known once the inputs are opened
  auto r = train::prepare_data(o, [&](int64_t done, int64_t total) {
    if (!bar) bar = std::make_unique<Progress>("data", total);
    bar->update(done);
  });
  if (bar) bar->finish();
  const auto& m = r.meta;
  if (json) {
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
