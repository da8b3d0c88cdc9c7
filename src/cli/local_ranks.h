#pragma once
// `--nproc N` of the commands that run data-parallel (train, finetune's ranks, eval).
#include <cstdint>

#include "cli/cli.h"

namespace mha2mla::cli {

// True when this process should start the ranks itself: N > 1 and no torchrun variables yet (WORLD_SIZE unset).
bool starts_local_ranks(int64_t nproc);

// Re-runs `mha2mla COMMAND ARGS` as `nproc` loopback ranks (dist::launch_local), with every argument but --nproc,
// and returns their exit status.
int run_local_ranks(const Args& args, int64_t nproc);

}  // namespace mha2mla::cli
