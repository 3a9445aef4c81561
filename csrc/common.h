// What every backend agrees on, torch-free so that the CUDA kernels (plain nvcc) include it too.
// Python mirrors these values in mopt_fast/_ops.py (the Triton and torch backends), and
// mopt_fast._C exports them so that tests/test_op_set.py checks the two agree.
#pragma once

#include <cmath>
#include <cstdint>

// The helpers below run on the host and, compiled by nvcc, in the CUDA kernels.
#ifdef __CUDACC__
#define MOPT_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MOPT_FAST_HOST_DEVICE inline
#endif

namespace mopt_fast {

// Elements per work item (CPU) or per block / program (CUDA, Triton): 256 KiB of fp32, sized to
// stay in L2 while one thread or block works on it, and small enough that gpt2-sized lists give a
// few thousand items to balance.
constexpr int64_t kChunkElems = int64_t{1} << 16;

// The norm orders with kernels of their own; every other p > 0 is kLp.
enum class NormKind : int { kL2 = 0, kL1 = 1, kLinf = 2, kLp = 3 };

inline NormKind norm_kind(double p) {
  if (p == 2.0) return NormKind::kL2;
  if (p == 1.0) return NormKind::kL1;
  if (std::isinf(p)) return NormKind::kLinf;
  return NormKind::kLp;
}

// The clip coefficient min(1, max_norm / (norm + 1e-6)) in the norm's precision, as torch
// computes it; NaN stays NaN (a NaN norm poisons the gradients, as in torch).
template <typename F>
MOPT_FAST_HOST_DEVICE F clip_coefficient(F norm, F max_norm) {
  const F coef = max_norm / (norm + static_cast<F>(1e-6));
  return coef != coef ? coef : (coef < F(1) ? coef : F(1));
}

}  // namespace mopt_fast
