#include "infer/runtime.h"

#include <malloc.h>
#include <torch/torch.h>

#include <cstdlib>
#include <thread>

namespace mha2mla::infer {

void init_runtime() {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("MHA2MLA_THREADS")) n = std::atoi(env);
  if (n > 0) torch::set_num_threads(n);
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace mha2mla::infer
