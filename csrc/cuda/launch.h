// The launcher API of the CUDA kernels: plain C++ over raw device pointers, no torch. The torch
// binding (binding.cpp) builds the chunk tables and calls these on the current stream.
// Every scalar the kernels act on (inv_scale, found_inf, the norm, the scale) is read from device
// memory: nothing here synchronizes with the host, and all of it can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace mopt_fast::cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
using mopt_fast::NormKind;  // csrc/common.h: one encoding for every backend

// A one-element device scalar of dtype kFloat32 or kFloat64; ptr == nullptr: absent.
struct DeviceScalar {
  const void* ptr;
  DType dtype;
};

// partials[k] = sum of |x * inv_scale|^p (or max |x * inv_scale|) over chunk k, in fp64.
// inv_scale may be null (no scaling). found_inf (may be null) is set to 1 when any value is
// inf/NaN; it is never cleared.
void launch_norm_partials(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                          NormKind kind, double p, const float* inv_scale, double* partials,
                          float* found_inf, cudaStream_t stream);

// out[index ? index[s] : s] = sum (or NaN-propagating max) of values[start[s] .. end[s]) for each
// segment s, in a fixed order. start/end null: one segment [0, n_values).
void launch_segment_reduce(const double* values, int64_t n_values, const int64_t* start,
                           const int64_t* end, const int64_t* index, int64_t n_segments, bool max,
                           double* out, cudaStream_t stream);

// out[i] = finish(sums[i]): sqrt for L2, pow(., 1/p) for general p, as is otherwise; written as
// fp32 or fp64 (out_dtype).
void launch_norm_finish(const double* sums, int64_t n, NormKind kind, double p, void* out,
                        DType out_dtype, cudaStream_t stream);

// x *= scale * min(1, max_norm / (norm + 1e-6)) over every chunk; absent parts count as 1.
// Skipped on the device when found_inf (may be null) is set or the factor is exactly 1.
void launch_scale(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                  DeviceScalar scale, DeviceScalar norm, double max_norm, const float* found_inf,
                  cudaStream_t stream);

// x = clamp(x, -limit, limit); NaN stays NaN.
void launch_clamp(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                  double limit, cudaStream_t stream);

void launch_zero(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                 cudaStream_t stream);

// x *= inv_scale; found_inf = 1 when any input is inf/NaN.
void launch_unscale(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                    const float* inv_scale, float* found_inf, cudaStream_t stream);

}  // namespace mopt_fast::cuda
