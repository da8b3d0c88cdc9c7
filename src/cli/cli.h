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

// Parsed "--key value" / "--flag" arguments; unknown or missing options are clear errors.
class Args {
 public:
  Args(std::string command, std::vector<std::string> argv);
  // Declares the options a subcommand accepts; call before reading values.
  const std::string& command() const { return command_; }
  const std::vector<std::string>& raw() const { return raw_; }  // the arguments as given
  bool help() const { return help_; }
  bool flag(const std::string& name) const;  // --name present (no value)
  std::optional<std::string> get(const std::string& name) const;
  std::string require(const std::string& name) const;  // throws Error "missing --name"
  std::vector<std::string> get_all(const std::string& name) const;  // repeated or multi-valued
  std::string get_or(const std::string& name, const std::string& def) const;
  long long get_int(const std::string& name, long long def) const;
  double get_double(const std::string& name, double def) const;
  // Throws Error on any option not in `allowed` (names without dashes); flags take no value.
  void validate(const std::vector<std::string>& allowed_values, const std::vector<std::string>& allowed_flags) const;

 private:
  std::string command_;
  std::vector<std::string> raw_;
  bool help_ = false;
  std::map<std::string, std::vector<std::string>> values_;  // every value of every occurrence
  std::map<std::string, std::vector<std::string>> last_;    // the values of the last occurrence
};

// Options shared by train and finetune (src/cli/train.cpp); the names they accept, and their help text.
void read_train_options(const Args& a, train::TrainOptions& o);
extern const std::vector<std::string> kTrainValueOptions;
extern const char* kTrainOptionsHelp;

int cmd_inspect(const Args& a);
int cmd_tokenize(const Args& a);
int cmd_ppl(const Args& a);
int cmd_generate(const Args& a);
int cmd_init(const Args& a);
int cmd_convert(const Args& a);
int cmd_train(const Args& a);
int cmd_finetune(const Args& a);
int cmd_cast(const Args& a);
int cmd_calibrate(const Args& a);
int cmd_tokenizer_train(const Args& a);
int cmd_data(const Args& a);
int cmd_eval(const Args& a);

}  // namespace mha2mla::cli
