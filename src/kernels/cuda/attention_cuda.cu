// Launches of the CUDA decode kernels (device code and plan: attention_cuda_kernels.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/attention_cuda.h"
#include "kernels/cuda/attention_cuda_kernels.cuh"

namespace mha2mla::kernels::cuda {
namespace {

template <class T>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(AttnArgs a, QuantSet qs, DecodePlan p,
                                                                float* part) {
  extern __shared__ float sm[];
  decode_split_block<T>(a, qs, p, part, sm);
}

template <class T>
__global__ void merge_kernel(AttnArgs a, DecodePlan p, const float* part) {
  merge_row<T>(a, p, part);
}

std::string cuda_error(const char* what, cudaError_t e) { return std::string(what) + ": " + cudaGetErrorString(e); }

// Makes `device` current for the scope (tensors on cuda:1 launch there), restoring the caller's.
struct DeviceScope {
  int prev = -1;
  cudaError_t err = cudaSuccess;
  explicit DeviceScope(int device) {
    err = cudaGetDevice(&prev);
    if (err == cudaSuccess && device >= 0 && device != prev) err = cudaSetDevice(device);
  }
  ~DeviceScope() {
    int now = -1;
    if (prev >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev) cudaSetDevice(prev);
  }
};

template <class T>
std::string launch(const AttnArgs& a, const DecodePlan& p, float* workspace) {
  auto split = decode_split_kernel<T>;
  if (p.smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(split, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem));
    if (e != cudaSuccess) return cuda_error("cudaFuncSetAttribute", e);
  }
  const dim3 grid(static_cast<unsigned>(p.nsplit), static_cast<unsigned>(p.row_blocks),
                  static_cast<unsigned>(a.B * a.groups));
  split<<<grid, kThreads, p.smem>>>(a, quant_set(a), p, workspace);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error("decode_split_kernel", e);
  merge_kernel<T><<<dim3(static_cast<unsigned>(p.rows), static_cast<unsigned>(a.B * a.groups)), merge_threads(a)>>>(
      a, p, workspace);
  e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : cuda_error("merge_kernel", e);
}

}  // namespace

std::string plan_decode(const AttnArgs& a, int device, DecodePlan* out) {
  DeviceScope scope(device);
  if (scope.err != cudaSuccess) return cuda_error("cudaSetDevice", scope.err);
  int sms = 0, smem_max = 0;
  cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return cuda_error("cudaDeviceGetAttribute", e);
  return plan_for(a, sms, smem_max, out);
}

std::string run_decode(const AttnArgs& a, const DecodePlan& p, int device, float* workspace) {
  DeviceScope scope(device);
  if (scope.err != cudaSuccess) return cuda_error("cudaSetDevice", scope.err);
  switch (a.dtype) {
    case DType::F32: return launch<float>(a, p, workspace);
    case DType::BF16: return launch<__nv_bfloat16>(a, p, workspace);
    case DType::F16: return launch<__half>(a, p, workspace);
  }
  return "unknown dtype";
}

}  // namespace mha2mla::kernels::cuda
