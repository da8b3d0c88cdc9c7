#pragma once
// One exception type for every user-facing failure: the CLI prints its message as one line and exits non-zero.
#include <stdexcept>
#include <string>

namespace mha2mla {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

inline void check(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

}  // namespace mha2mla
