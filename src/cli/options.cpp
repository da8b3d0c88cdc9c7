#include "cli/options.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "util/error.h"

namespace mha2mla::cli {

OptionTable::OptionTable(std::string command, std::string usage, std::string about)
    : command_(std::move(command)), usage_(std::move(usage)), about_(std::move(about)) {
  flag("help", "show this help", [] {});
}

OptionTable& OptionTable::add(OptionRow row) {
  for (const auto& r : rows_) check(r.name != row.name, "option --" + row.name + " declared twice");
  rows_.push_back(std::move(row));
  return *this;
}

OptionTable& OptionTable::value(const std::string& name, const std::string& hint, const std::string& help,
                                std::function<void(const std::string&)> set, const std::string& def) {
  return add({name, hint, help, def, false, false, [set](const std::vector<std::string>& v) { set(v.at(0)); }});
}

OptionTable& OptionTable::required(const std::string& name, const std::string& hint, const std::string& help,
                                   std::function<void(const std::string&)> set) {
  return add({name, hint, help, "", true, false, [set](const std::vector<std::string>& v) { set(v.at(0)); }});
}

OptionTable& OptionTable::multi(const std::string& name, const std::string& hint, const std::string& help,
                                std::function<void(const std::vector<std::string>&)> set, bool required,
                                const std::string& def) {
  return add({name, hint, help, def, required, true, std::move(set)});
}

OptionTable& OptionTable::flag(const std::string& name, const std::string& help, std::function<void()> set) {
  return add({name, "", help, "", false, false, [set](const std::vector<std::string>&) { set(); }});
}

OptionTable& OptionTable::text(const std::string& name, const std::string& hint, const std::string& help,
                               std::string& dst, const std::string& def) {
  return value(name, hint, help, [&dst](const std::string& v) { dst = v; }, def.empty() ? dst : def);
}

OptionTable& OptionTable::integer(const std::string& name, const std::string& hint, const std::string& help,
                                  int64_t& dst, int64_t min, const std::string& def) {
  return value(
      name, hint, help,
      [&dst, name, min](const std::string& v) {
        dst = parse_int(name, v);
        check(dst >= min, "--" + name + " must be at least " + std::to_string(min));
      },
      def.empty() ? std::to_string(dst) : def);
}

OptionTable& OptionTable::number(const std::string& name, const std::string& hint, const std::string& help,
                                 double& dst, const std::string& def) {
  std::ostringstream d;
  d << dst;
  return value(name, hint, help, [&dst, name](const std::string& v) { dst = parse_number(name, v); },
               def.empty() ? d.str() : def);
}

OptionTable& OptionTable::toggle(const std::string& name, const std::string& help, bool& dst) {
  return flag(name, help, [&dst] { dst = true; });
}

OptionTable& OptionTable::note(const std::string& text) {
  notes_ += text;
  if (!notes_.empty() && notes_.back() != '\n') notes_ += '\n';
  return *this;
}

std::string OptionTable::help() const {
  std::ostringstream o;
  o << "usage: mha2mla " << command_ << " " << usage_ << "\n\n" << about_ << "\n\n";
  for (const auto& r : rows_) {
    if (r.name == "help") continue;
    std::string head = "  --" + r.name + (r.hint.empty() ? "" : " " + r.hint);
    std::string text = r.help;
    if (!r.def.empty()) text += " (default: " + r.def + ")";
    if (r.required) text += " [required]";
    std::istringstream lines(text);
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
      if (first) {
        if (head.size() < 22) {
          o << head << std::string(22 - head.size(), ' ') << line << "\n";
        } else {
          o << head << "\n" << std::string(22, ' ') << line << "\n";
        }
        first = false;
      } else {
        o << std::string(22, ' ') << line << "\n";
      }
    }
  }
  if (!notes_.empty()) o << "\n" << notes_;
  return o.str();
}

bool OptionTable::parse(const Args& a) const {
  if (a.help()) {
    std::fputs(help().c_str(), stdout);
    return false;
  }
  std::vector<std::string> vals, flags;
  for (const auto& r : rows_) (r.hint.empty() ? flags : vals).push_back(r.name);
  a.validate(vals, flags);
  for (const auto& r : rows_) {
    if (r.name == "help") continue;
    if (!a.flag(r.name)) {
      usage_check(!r.required, "missing --" + r.name + " (see mha2mla " + command_ + " --help)");
      continue;
    }
    // A setter only checks and stores its value, so whatever it rejects is a usage error.
    try {
      if (r.hint.empty()) {
        r.set({});
      } else if (r.multi) {
        r.set(a.get_all(r.name));
      } else {
        r.set({*a.get(r.name)});
      }
    } catch (const UsageError&) {
      throw;
    } catch (const Error& e) {
      usage_fail(e.what());
    }
  }
  return true;
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::string& prefix) {
  const std::string* best = nullptr;
  size_t best_d = 0;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (!best || d < best_d) best = &c, best_d = d;
  }
  // One edit per three letters (at least one): further than that it is another word, not a typo.
  if (!best || best_d > std::max<size_t>(1, word.size() / 3)) return "";
  return " (did you mean " + prefix + *best + "?)";
}

int64_t parse_int(const std::string& option, const std::string& v) {
  try {
    size_t pos = 0;
    long long x = std::stoll(v, &pos);
    if (pos == v.size()) return x;
  } catch (...) {
  }
  usage_fail("--" + option + " expects an integer, got \"" + v + "\"");
}

double parse_number(const std::string& option, const std::string& v) {
  try {
    size_t pos = 0;
    double x = std::stod(v, &pos);
    if (pos == v.size()) return x;
  } catch (...) {
  }
  usage_fail("--" + option + " expects a number, got \"" + v + "\"");
}

const std::string& parse_choice(const std::string& option, const std::string& v,
                                const std::vector<std::string>& allowed) {
  for (const auto& s : allowed)
    if (s == v) return s;
  std::string list;
  for (size_t i = 0; i < allowed.size(); ++i) list += (i ? (i + 1 == allowed.size() ? " or " : ", ") : "") + allowed[i];
  usage_fail("--" + option + " must be " + list + ", got \"" + v + "\"");
}

}  // namespace mha2mla::cli
