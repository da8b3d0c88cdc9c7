#pragma once
// Data parallelism over libtorch's c10d: Gloo on CPU, NCCL when built with CUDA and training on a GPU.
// Ranks join through a TCP store, torchrun-style: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace mha2mla::dist {

class Dist {
 public:
  Dist() = default;  // single process
  // Reads the torchrun variables; a single process when WORLD_SIZE is unset or 1.
  static Dist from_env(const torch::Device& device);
  int rank() const { return rank_; }
  int world() const { return world_; }
  bool is_main() const { return rank_ == 0; }

  // In-place mean over ranks, flattening into one buffer per call.
  void allreduce_mean(const std::vector<torch::Tensor>& ts);
  void allreduce_sum(torch::Tensor& t);
  void broadcast(torch::Tensor& t, int root);
  void barrier();

 private:
  int rank_ = 0, world_ = 1;
  struct Group;  // the c10d process group, kept out of this header
  std::shared_ptr<Group> pg_;
};

// `mha2mla train --nproc N`: re-runs this program N times with the torchrun variables set for a
// loopback group, forwards their exit status, and stops the others when one fails.
int launch_local(int nproc, const std::vector<std::string>& argv_without_nproc);

}  // namespace mha2mla::dist
