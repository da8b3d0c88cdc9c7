// The kernels' parallel loops really run on several threads: at::parallel_for is a header template that
// silently runs serially where _OPENMP is not defined, so a build without -fopenmp used one core for every
// kernel of ours while at::get_num_threads() still said 2.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/cpu_features.h"

using namespace mha2mla;

TEST(KernelThreads, ParallelLoopsUseEveryThread) {
  const int saved = at::get_num_threads();
  for (int n : {1, 2, 3}) {
    at::set_num_threads(n);
    EXPECT_EQ(kernels::parallel_worker_threads(12), n) << n << " threads asked for";
  }
  at::set_num_threads(saved);
}
