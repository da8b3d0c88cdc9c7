#pragma once
// A one-line progress bar on stderr, drawn only when stderr is a terminal so logs stay clean.
#include <chrono>
#include <cstdint>
#include <string>

namespace mha2mla {

class Progress {
 public:
  Progress(std::string label, int64_t total);
  ~Progress();
  void update(int64_t done, const std::string& extra = "");
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace mha2mla
