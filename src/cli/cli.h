#pragma once
// Subcommand registry: each src/cli/<name>.cpp defines one int cmd_<name>(const Args&).
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mha2mla::train {
struct TrainOptions;
}

namespace mha2mla::cli {

// Parsed "--key value" / "--flag" arguments. Commands read them through an OptionTable (cli/options.h),
// which validates them against the command's rows.
class Args {
 public:
  Args(std::string command, std::vector<std::string> argv);
  const std::string& command() const { return command_; }
  const std::vector<std::string>& raw() const { return raw_; }  // the arguments as given
  bool help() const { return help_; }
  bool flag(const std::string& name) const;  // --name present (no value)
  std::optional<std::string> get(const std::string& name) const;
  std::vector<std::string> get_all(const std::string& name) const;  // repeated or multi-valued
  // Throws Error on any option not in `allowed` (names without dashes); flags take no value.
  void validate(const std::vector<std::string>& allowed_values, const std::vector<std::string>& allowed_flags) const;

 private:
  std::string command_;
  std::vector<std::string> raw_;
  bool help_ = false;
  std::map<std::string, std::vector<std::string>> values_;  // every value of every occurrence
  std::map<std::string, std::vector<std::string>> last_;    // the values of the last occurrence
};

class OptionTable;
// Options shared by train and finetune (src/cli/train.cpp). Defaults that derive from --steps, and those that
// differ for finetune, stay unset (-1) while parsing and are filled in by finish_train_options.
struct TrainFlags {
  bool finetune = false;
  double lr = -1, weight_decay = -1;
  int64_t warmup = -1, decay_start = -1, val_every = -1, save_every = -1, val_windows = 64;
};
void add_train_options(OptionTable& t, train::TrainOptions& o, TrainFlags& f, bool finetune);
void finish_train_options(train::TrainOptions& o, const TrainFlags& f);

int cmd_inspect(const Args& a);
int cmd_tokenize(const Args& a);
int cmd_ppl(const Args& a);
int cmd_generate(const Args& a);
int cmd_serve(const Args& a);
int cmd_init(const Args& a);
int cmd_convert(const Args& a);
int cmd_train(const Args& a);
int cmd_finetune(const Args& a);
int cmd_cast(const Args& a);
int cmd_calibrate(const Args& a);
int cmd_tokenizer_train(const Args& a);
int cmd_data(const Args& a);
int cmd_bench(const Args& a);
int cmd_eval(const Args& a);
int cmd_reproduce(const Args& a);

}  // namespace mha2mla::cli
