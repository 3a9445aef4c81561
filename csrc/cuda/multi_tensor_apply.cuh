// Generic multi-tensor apply for the CUDA backend. Torch-free: raw pointers and a chunk table in
// device memory, so this compiles with plain nvcc.
//
// The chunk table is one int64 array (layout shared with triton_kernels/_apply.py), n tensors of
// one dtype and c chunks:
//   [0, n) data pointers   [n, 2n) element counts   [2n, 3n) index in the caller's list
//   [3n, 4n) first chunk   [4n, 5n) end chunk       [5n, 5n + c) chunk -> tensor
//   [5n + c, 5n + 2c) chunk -> first element
// One block handles one chunk of kChunk elements. Every size and offset is int64, so tensors past
// 2^31 elements work. Aligned chunks move 16 bytes per load/store, kUnroll loads in flight per
// thread.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace mopt_fast::cuda {

constexpr int64_t kChunk = kChunkElems;  // csrc/common.h
constexpr int kThreads = 512;
constexpr int kUnroll = 4;

struct ChunkTable {
  const int64_t* data;
  int64_t n_tensors;
  int64_t n_chunks;

  __device__ __forceinline__ void* ptr(int64_t t) const {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(data[t]));
  }
  __device__ __forceinline__ int64_t numel(int64_t t) const { return data[n_tensors + t]; }
  __device__ __forceinline__ int64_t index(int64_t t) const { return data[2 * n_tensors + t]; }
  __device__ __forceinline__ int64_t chunk_tensor(int64_t k) const {
    return data[5 * n_tensors + k];
  }
  __device__ __forceinline__ int64_t chunk_start(int64_t k) const {
    return data[5 * n_tensors + n_chunks + k];
  }
};

// This block's chunk: its tensor's data and the element range [begin, end).
struct ChunkRange {
  void* base;
  int64_t begin;
  int64_t end;
};

__device__ __forceinline__ ChunkRange this_chunk(const ChunkTable& table) {
  const int64_t k = blockIdx.x;
  const int64_t t = table.chunk_tensor(k);
  const int64_t begin = table.chunk_start(k);
  return {table.ptr(t), begin, min(begin + kChunk, table.numel(t))};
}

// Compute type: fp32 for fp32/fp16/bf16, fp64 for fp64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T x) {
  return static_cast<acc_t<T>>(x);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
struct alignas(16) Vec16 {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

// max that propagates NaN, as torch's inf norm does.
__device__ __forceinline__ double nan_max(double a, double b) {
  return (b != b || b > a) ? b : a;
}

// Visits elements [begin, end) of p in this block: fn(x) with x a register copy of each element;
// with kWrite the (possibly changed) copy is stored back.
template <bool kWrite, typename T, typename Fn>
__device__ __forceinline__ void visit_chunk(T* p, int64_t begin, int64_t end, Fn& fn) {
  using V = Vec16<T>;
  constexpr int kN = V::kN;
  T* q = p + begin;
  const int64_t n = end - begin;
  int64_t done = 0;
  if (reinterpret_cast<uintptr_t>(q) % 16 == 0) {
    V* qv = reinterpret_cast<V*>(q);
    const int64_t n_vec = n / kN;
    const int64_t step = static_cast<int64_t>(blockDim.x) * kUnroll;
    for (int64_t i0 = threadIdx.x; i0 < n_vec; i0 += step) {
      V r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (j < n_vec) r[u] = qv[j];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = i0 + static_cast<int64_t>(u) * blockDim.x;
        if (j < n_vec) {
#pragma unroll
          for (int k = 0; k < kN; ++k) fn(r[u].v[k]);
          if constexpr (kWrite) qv[j] = r[u];
        }
      }
    }
    done = n_vec * kN;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    T x = q[i];
    fn(x);
    if constexpr (kWrite) q[i] = x;
  }
}

// Block-wide reduction in a fixed order (warp shuffle tree, then warp results in order): the
// same inputs give the same bits on every run. Result valid in thread 0.
template <bool kMax>
__device__ double block_reduce(double v) {
  __shared__ double warp_results[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const double other = __shfl_down_sync(0xffffffffu, v, offset);
    v = kMax ? nan_max(v, other) : v + other;
  }
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    const int n_warps = (blockDim.x + 31) / 32;
    for (int w = 0; w < n_warps; ++w)
      total = kMax ? nan_max(total, warp_results[w]) : total + warp_results[w];
  }
  __syncthreads();  // warp_results may be reused by a later call
  return total;
}

}  // namespace mopt_fast::cuda

#include "launch.h"

namespace mopt_fast::cuda {

// Calls fn(T{}) with T the element type of dtype (host side, to pick a kernel instantiation).
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); break;
    case DType::kFloat64: fn(double{}); break;
    case DType::kFloat16: fn(__half{}); break;
    case DType::kBFloat16: fn(__nv_bfloat16{}); break;
  }
}

inline dim3 chunk_grid(int64_t n_chunks) {
  return dim3(static_cast<unsigned>(n_chunks));
}

}  // namespace mopt_fast::cuda
