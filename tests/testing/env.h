#pragma once
// An environment variable set (or unset) for one scope, restored to what it was after: the suite itself may run
// under the variable (MHA2MLA_KERNELS=avx2 on an AVX-512 machine), and later tests must see it again.
#include <cstdlib>
#include <string>

namespace mha2mla::testutil {

class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old, had_ = true;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~EnvGuard() {
    if (had_) setenv(name_.c_str(), saved_.c_str(), 1);
    else unsetenv(name_.c_str());
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  std::string name_, saved_;
  bool had_ = false;
};

}  // namespace mha2mla::testutil
