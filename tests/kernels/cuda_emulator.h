#pragma once
// Runs CUDA kernel bodies (src/kernels/cuda/*.cuh) on the CPU, so that their indexing, masking and
// synchronisation are tested in every build, GPU or not. A grid runs one thread block at a time; each CUDA
// thread of the block is a coroutine (ucontext) on one OS thread, and __syncthreads, __syncwarp and the warp
// shuffles switch between them, so a thread that reads what another wrote before a barrier sees it, as on the
// device. Include it after libtorch and before the kernels: it defines the CUDA qualifiers away and provides
// threadIdx/blockIdx/blockDim and the 16-bit types.
//
// It checks the logic, not the hardware: memory is the host's, and races that a barrier-free schedule on a GPU
// could expose are not searched for (each thread runs until its next synchronisation point).
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/scalar_convert.h"

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(x)
#define MHA2MLA_UNROLL

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline EmuDim3 threadIdx, blockIdx, blockDim;

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) { return mha2mla::kernels::bf16_to_f32(h.bits); }
inline __nv_bfloat16 __float2bfloat16(float f) { return {mha2mla::kernels::f32_to_bf16(f)}; }
inline float __half2float(__half h) { return mha2mla::kernels::f16_to_f32(h.bits); }
inline __half __float2half(float f) { return {mha2mla::kernels::f32_to_f16(f)}; }
inline __half __ushort_as_half(uint16_t bits) { return {bits}; }

namespace cuda_emu {

struct Block {
  int threads = 0, current = 0;
  std::vector<ucontext_t> ctx;
  ucontext_t scheduler;
  std::vector<char> done;
  int arrived = 0;
  int64_t generation = 0;                    // __syncthreads
  std::vector<int> warp_arrived;
  std::vector<int64_t> warp_generation;      // __syncwarp and the shuffles
  std::vector<float> lanes;                  // one value per thread, for the shuffles
  const std::function<void()>* body = nullptr;
};
inline Block* block = nullptr;

inline void yield() { swapcontext(&block->ctx[block->current], &block->scheduler); }

inline void trampoline() {
  (*block->body)();
  block->done[block->current] = 1;  // returning resumes the scheduler (uc_link)
}

inline void warp_barrier() {
  Block& b = *block;
  const int w = b.current / 32;
  const int64_t g = b.warp_generation[w];
  if (++b.warp_arrived[w] == 32) {
    b.warp_arrived[w] = 0;
    ++b.warp_generation[w];
  }
  while (b.warp_generation[w] == g) yield();
}

// Runs `body` as every thread of block `idx` of `threads` threads (a multiple of 32).
inline void run_block(EmuDim3 idx, int threads, const std::function<void()>& body) {
  constexpr size_t kStack = 64 * 1024;
  static std::vector<std::vector<char>> stacks;
  if (stacks.size() < static_cast<size_t>(threads)) stacks.resize(threads);
  Block b;
  b.threads = threads;
  b.ctx.resize(threads);
  b.done.assign(threads, 0);
  b.warp_arrived.assign((threads + 31) / 32, 0);
  b.warp_generation.assign((threads + 31) / 32, 0);
  b.lanes.assign(threads, 0.f);
  b.body = &body;
  block = &b;
  for (int i = 0; i < threads; ++i) {
    stacks[i].resize(kStack);
    getcontext(&b.ctx[i]);
    b.ctx[i].uc_stack.ss_sp = stacks[i].data();
    b.ctx[i].uc_stack.ss_size = kStack;
    b.ctx[i].uc_link = &b.scheduler;
    makecontext(&b.ctx[i], trampoline, 0);
  }
  blockIdx = idx;
  blockDim = EmuDim3{static_cast<unsigned>(threads), 1, 1};
  for (bool running = true; running;) {
    running = false;
    for (int i = 0; i < threads; ++i) {
      if (b.done[i]) continue;
      running = true;
      b.current = i;
      threadIdx = EmuDim3{static_cast<unsigned>(i), 0, 0};
      swapcontext(&b.scheduler, &b.ctx[i]);
    }
  }
  block = nullptr;
}

// A grid of blocks, in order: `before` runs ahead of each block (to reset its shared memory), then `body` as
// each of its threads.
inline void launch(EmuDim3 grid, int threads, const std::function<void()>& body,
                   const std::function<void()>& before = {}) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        if (before) before();
        run_block(EmuDim3{x, y, z}, threads, body);
      }
}

}  // namespace cuda_emu

inline void __syncthreads() {
  cuda_emu::Block& b = *cuda_emu::block;
  const int64_t g = b.generation;
  if (++b.arrived == b.threads) {
    b.arrived = 0;
    ++b.generation;
  }
  while (b.generation == g) cuda_emu::yield();
}

inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emu::warp_barrier(); }

inline float __shfl_xor_sync(unsigned, float x, int lane_mask) {
  cuda_emu::Block& b = *cuda_emu::block;
  b.lanes[b.current] = x;
  cuda_emu::warp_barrier();
  const float y = b.lanes[b.current ^ lane_mask];
  cuda_emu::warp_barrier();
  return y;
}
