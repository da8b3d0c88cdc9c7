#pragma once
// Each subcommand declares its options once, as rows of an OptionTable: names, value hint, help with its
// default, and a setter (as llama.cpp's common_arg table does). --help, validation and parsing all come
// from the table, so an option is written in one place.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "util/error.h"

namespace mha2mla::cli {

// Exit status: 0 success, 1 the command failed (bad input files, a model that cannot load, ...), 2 the
// command line itself is wrong. UsageError marks the last: unknown commands and options, missing or malformed
// values, options that contradict each other. main() maps it to 2.
constexpr int kExitFailure = 1, kExitUsage = 2;
struct UsageError : Error {
  using Error::Error;
};
[[noreturn]] inline void usage_fail(const std::string& msg) { throw UsageError(msg); }
inline void usage_check(bool ok, const std::string& msg) {
  if (!ok) usage_fail(msg);
}

// " (did you mean X?)" for the candidate nearest to `word` in edits, when it is close enough to be a typo;
// else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::string& prefix = "");

struct OptionRow {
  std::string name;  // without the dashes
  std::string hint;  // value placeholder ("DIR", "N"); empty for a flag
  std::string help;  // one or more lines, without the default
  std::string def;   // shown as "(default: ...)"; empty shows none
  bool required = false;
  bool multi = false;  // takes several values ("--in a b c") and may repeat
  std::function<void(const std::vector<std::string>&)> set;  // called once with the values, if given
};

class OptionTable {
 public:
  // usage: what follows "mha2mla <command>" in the usage line; about: what the command does.
  OptionTable(std::string command, std::string usage, std::string about);

  // A single-valued option; the setter runs only when it is given.
  OptionTable& value(const std::string& name, const std::string& hint, const std::string& help,
                     std::function<void(const std::string&)> set, const std::string& def = "");
  OptionTable& required(const std::string& name, const std::string& hint, const std::string& help,
                        std::function<void(const std::string&)> set);
  OptionTable& multi(const std::string& name, const std::string& hint, const std::string& help,
                     std::function<void(const std::vector<std::string>&)> set, bool required = false,
                     const std::string& def = "");
  OptionTable& flag(const std::string& name, const std::string& help, std::function<void()> set);
  // Typed rows bound to a variable; the default shown is the variable's value when the row is added,
  // unless `def` says otherwise (e.g. "steps/10").
  OptionTable& text(const std::string& name, const std::string& hint, const std::string& help, std::string& dst,
                    const std::string& def = "");
  OptionTable& integer(const std::string& name, const std::string& hint, const std::string& help, int64_t& dst,
                       int64_t min = INT64_MIN, const std::string& def = "");
  OptionTable& number(const std::string& name, const std::string& hint, const std::string& help, double& dst,
                      const std::string& def = "");
  OptionTable& toggle(const std::string& name, const std::string& help, bool& dst);
  // Free text printed after the options.
  OptionTable& note(const std::string& text);

  const std::string& command() const { return command_; }
  const std::vector<OptionRow>& rows() const { return rows_; }
  std::string help() const;
  // --help: prints help() and returns false. Otherwise rejects unknown options, values given to flags,
  // missing values and missing required options, then runs the setters in table order; returns true.
  // Every error it raises, a setter's included, is a UsageError.
  bool parse(const Args& a) const;

 private:
  OptionTable& add(OptionRow row);
  std::string command_, usage_, about_, notes_;
  std::vector<OptionRow> rows_;
};

// Value parsers with errors that name the option.
int64_t parse_int(const std::string& option, const std::string& v);
double parse_number(const std::string& option, const std::string& v);
// One of `allowed`, or an error listing them.
const std::string& parse_choice(const std::string& option, const std::string& v,
                                const std::vector<std::string>& allowed);

}  // namespace mha2mla::cli
