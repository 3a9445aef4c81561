// What every backend agrees on, torch-free so that the CUDA kernels (plain nvcc) include it too.
// Python mirrors these values in mopt_fast/_ops.py (the Triton and torch backends), and
// mopt_fast._C exports them so that tests/test_op_set.py checks the two agree.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

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

// Calls fn(std::integral_constant<NormKind, K>{}) with K == kind: the one place a run-time norm
// kind becomes the compile-time K of a kernel instantiation (host side, CPU and CUDA).
template <typename Fn>
void dispatch_norm_kind(NormKind kind, Fn&& fn) {
  switch (kind) {
    case NormKind::kL2: fn(std::integral_constant<NormKind, NormKind::kL2>{}); break;
    case NormKind::kL1: fn(std::integral_constant<NormKind, NormKind::kL1>{}); break;
    case NormKind::kLinf: fn(std::integral_constant<NormKind, NormKind::kLinf>{}); break;
    case NormKind::kLp: fn(std::integral_constant<NormKind, NormKind::kLp>{}); break;
  }
}

// The norm from its reduced value: sqrt of the sum of squares (L2), pow(sum, 1/p) (general p),
// and the sum (L1) or max (inf) as it is.
MOPT_FAST_HOST_DEVICE double finish_norm(NormKind kind, double value, double p) {
  switch (kind) {
    case NormKind::kL2: return std::sqrt(value);
    case NormKind::kLp: return std::pow(value, 1.0 / p);
    case NormKind::kL1:
    case NormKind::kLinf: break;
  }
  return value;
}

// The clip coefficient min(1, max_norm / (norm + 1e-6)) in the norm's precision, as torch
// computes it; NaN stays NaN (a NaN norm poisons the gradients, as in torch).
template <typename F>
MOPT_FAST_HOST_DEVICE F clip_coefficient(F norm, F max_norm) {
  const F coef = max_norm / (norm + static_cast<F>(1e-6));
  return coef != coef ? coef : (coef < F(1) ? coef : F(1));
}

}  // namespace mopt_fast
