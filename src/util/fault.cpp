#include "util/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace mha2mla {

void fault_point(const char* name) {
  const char* spec = std::getenv("MHA2MLA_FAULT");
  if (!spec || !*spec) return;
  const char* at = std::strchr(spec, '@');
  const std::string want = at ? std::string(spec, at) : std::string(spec);
  if (want != name) return;
  // MHA2MLA_FAULT_RANK=R: only data-parallel rank R (env RANK, 0 when unset) is killed.
  if (const char* r = std::getenv("MHA2MLA_FAULT_RANK"); r && *r) {
    const char* mine = std::getenv("RANK");
    if (std::atoi(r) != (mine ? std::atoi(mine) : 0)) return;
  }
  static std::atomic<long> hits{0};
  const long n = at ? std::atol(at + 1) : 1;
  if (++hits == n) ::kill(::getpid(), SIGKILL);
}

}  // namespace mha2mla
