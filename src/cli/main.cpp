// mha2mla: one binary, one subcommand per file in src/cli/.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli/cli.h"
#include "infer/runtime.h"
#include "util/error.h"

namespace mha2mla::cli {

Args::Args(std::string command, std::vector<std::string> argv) : command_(std::move(command)), raw_(argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    check(a.rfind("--", 0) == 0 && a.size() > 2, "unexpected argument \"" + a + "\" (options start with --)");
    std::string key = a.substr(2), val;
    auto eq = key.find('=');
    const std::string name = eq == std::string::npos ? key : key.substr(0, eq);
    auto& slot = values_[name];
    auto& last = last_[name];  // a repeated single-value option: the last one wins, as usual
    last.clear();
    if (eq != std::string::npos) {
      slot.push_back(key.substr(eq + 1));
      last.push_back(key.substr(eq + 1));
      continue;
    }
    // Values run until the next --option, so "--in a b c" gives three values.
    while (i + 1 < argv.size() && !(argv[i + 1].rfind("--", 0) == 0 && argv[i + 1].size() > 2)) {
      slot.push_back(argv[++i]);
      last.push_back(argv[i]);
    }
  }
}

bool Args::flag(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = last_.find(name);
  if (it == last_.end()) return std::nullopt;
  check(it->second.size() == 1, "--" + name + " takes exactly one value");
  return it->second[0];
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

void Args::validate(const std::vector<std::string>& vals, const std::vector<std::string>& flags) const {
  for (const auto& [k, v] : values_) {
    bool is_val = std::find(vals.begin(), vals.end(), k) != vals.end();
    bool is_flag = std::find(flags.begin(), flags.end(), k) != flags.end();
    check(is_val || is_flag, command_ + ": unknown option --" + k + " (see mha2mla " + command_ + " --help)");
    if (is_flag && !is_val) check(v.empty(), command_ + ": --" + k + " takes no value");
    if (is_val && !is_flag) check(!v.empty(), command_ + ": --" + k + " needs a value");
  }
}

}  // namespace mha2mla::cli

namespace {

struct Command {
  const char* name;
  int (*fn)(const mha2mla::cli::Args&);
  const char* summary;
};

const Command kCommands[] = {
    {"inspect", mha2mla::cli::cmd_inspect, "show a model's config and tensor table"},
    {"tokenize", mha2mla::cli::cmd_tokenize, "encode stdin lines to token ids (JSON arrays)"},
    {"ppl", mha2mla::cli::cmd_ppl, "perplexity of a text file with a sliding window"},
    {"eval", mha2mla::cli::cmd_eval, "benchmark scores: multiple choice by log-likelihood, LongBench-style generation"},
    {"reproduce", mha2mla::cli::cmd_reproduce, "the paper's ablations at small scale: one table, one plot"},
    {"generate", mha2mla::cli::cmd_generate, "generate text from a prompt, streamed"},
    {"convert", mha2mla::cli::cmd_convert, "convert an MHA/GQA model to MLA (partial RoPE + latent KV)"},
    {"train", mha2mla::cli::cmd_train, "train a model on token shards (one or several processes)"},
    {"finetune", mha2mla::cli::cmd_finetune, "recover a converted model by fine-tuning, with the fair baseline"},
    {"cast", mha2mla::cli::cmd_cast, "rewrite a model's weights in another dtype"},
    {"init", mha2mla::cli::cmd_init, "create a randomly initialised model from a config.json"},
    {"calibrate", mha2mla::cli::cmd_calibrate, "q/k frequency norms and input covariances over a text"},
    {"tokenizer-train", mha2mla::cli::cmd_tokenizer_train, "train a byte-level BPE tokenizer on text files"},
    {"data", mha2mla::cli::cmd_data, "tokenize text/JSONL into train/val token shards"},
    {"bench", mha2mla::cli::cmd_bench, "decode/prefill speed of MHA vs the MLA ladder per cache type and context"},
};

void usage(FILE* out) {
  std::fprintf(out, "usage: mha2mla <command> [options]\n\nConvert, fine-tune, evaluate and serve Llama-family models "
                    "with Multi-head Latent Attention.\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(out, "  %-16s %s\n", c.name, c.summary);
  std::fprintf(out, "\nRun 'mha2mla <command> --help' for a command's options.\n");
}

// Errors are one line: keep only the first line of whatever the library said.
void print_error(const std::string& cmd, const std::string& what) {
  std::string line = what.substr(0, what.find('\n'));
  std::fprintf(stderr, "mha2mla %s: error: %s\n", cmd.c_str(), line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  mha2mla::infer::init_runtime();
  for (const auto& c : kCommands) {
    if (cmd != c.name) continue;
    try {
      mha2mla::cli::Args args(cmd, std::vector<std::string>(argv + 2, argv + argc));
      return c.fn(args);
    } catch (const mha2mla::Error& e) {
      print_error(cmd, e.what());
    } catch (const c10::Error& e) {
      print_error(cmd, e.what_without_backtrace());
    } catch (const std::exception& e) {
      print_error(cmd, e.what());
    }
    return 1;
  }
  std::fprintf(stderr, "mha2mla: error: unknown command \"%s\" (run 'mha2mla --help')\n", cmd.c_str());
  return 2;
}
