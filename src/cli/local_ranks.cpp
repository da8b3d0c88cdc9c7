#include "cli/local_ranks.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "dist/distributed.h"

namespace mha2mla::cli {

bool starts_local_ranks(int64_t nproc) { return nproc > 1 && !std::getenv("WORLD_SIZE"); }

int run_local_ranks(const Args& args, int64_t nproc) {
  std::vector<std::string> argv{"mha2mla", args.command()};
  const auto& raw = args.raw();
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (raw[i].rfind("--nproc=", 0) == 0) continue;
    argv.push_back(raw[i]);
  }
  return dist::launch_local(static_cast<int>(nproc), argv);
}

}  // namespace mha2mla::cli
