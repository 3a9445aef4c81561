// Read-only reductions: fp64 partial norms per chunk (with the AMP unscale and inf/NaN check
// folded in), a fixed-order segment reduction, and the finishing sqrt/pow.
#include "multi_tensor_apply.cuh"

namespace mopt_fast::cuda {
namespace {

template <typename T, NormKind K, bool kScaled>
struct NormOp {
  using A = acc_t<T>;
  A scale;
  double p;
  double acc = 0.0;
  A check = A(0);  // becomes NaN exactly when an inf/NaN input was seen: x * 0

  __device__ __forceinline__ void operator()(T& x) {
    A v = to_acc(x);
    check += v * A(0);
    if constexpr (kScaled) v *= scale;
    // fp64 accumulation: exact enough for any list, and huge finite values cannot overflow.
    const double d = fabs(static_cast<double>(v));
    if constexpr (K == NormKind::kL2)
      acc = fma(d, d, acc);
    else if constexpr (K == NormKind::kL1)
      acc += d;
    else if constexpr (K == NormKind::kLinf)
      acc = nan_max(acc, d);
    else
      acc += d == 0.0 ? 0.0 : pow(d, p);
  }
};

template <typename T, NormKind K, bool kScaled>
__global__ void __launch_bounds__(kThreads)
    norm_partials_kernel(ChunkTable table, const float* inv_scale, double p, double* partials,
                         float* found_inf) {
  const ChunkRange chunk = this_chunk(table);
  NormOp<T, K, kScaled> op{kScaled ? static_cast<acc_t<T>>(*inv_scale) : acc_t<T>(1), p};
  visit_chunk<false>(static_cast<T*>(chunk.base), chunk.begin, chunk.end, op);
  const double total = block_reduce<K == NormKind::kLinf>(op.acc);
  const bool bad = __syncthreads_or(op.check != op.check);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = total;
    // Every block that finds an inf/NaN stores the same 1.0: no atomics, same result.
    if (bad && found_inf != nullptr) *found_inf = 1.0f;
  }
}

template <bool kMax>
__global__ void __launch_bounds__(kThreads)
    segment_reduce_kernel(const double* values, int64_t n_values, const int64_t* start,
                          const int64_t* end, const int64_t* index, double* out) {
  const int64_t s = blockIdx.x;
  const int64_t lo = start ? start[s] : 0;
  const int64_t hi = end ? end[s] : n_values;
  double acc = 0.0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    acc = kMax ? nan_max(acc, values[i]) : acc + values[i];
  }
  acc = block_reduce<kMax>(acc);
  if (threadIdx.x == 0) out[index ? index[s] : s] = acc;
}

template <typename Out>
__global__ void norm_finish_kernel(const double* sums, int64_t n, NormKind kind, double p,
                                   Out* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<Out>(finish_norm(kind, sums[i], p));
  }
}

template <typename T, NormKind K>
void launch_partials(const int64_t* table, int64_t n_tensors, int64_t n_chunks, double p,
                     const float* inv_scale, double* partials, float* found_inf,
                     cudaStream_t stream) {
  const ChunkTable tab{table, n_tensors, n_chunks};
  if (inv_scale) {
    norm_partials_kernel<T, K, true>
        <<<chunk_grid(n_chunks), kThreads, 0, stream>>>(tab, inv_scale, p, partials, found_inf);
  } else {
    norm_partials_kernel<T, K, false>
        <<<chunk_grid(n_chunks), kThreads, 0, stream>>>(tab, inv_scale, p, partials, found_inf);
  }
}

}  // namespace

void launch_norm_partials(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                          NormKind kind, double p, const float* inv_scale, double* partials,
                          float* found_inf, cudaStream_t stream) {
  if (n_chunks == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_norm_kind(kind, [&](auto kind_tag) {
      launch_partials<T, decltype(kind_tag)::value>(table, n_tensors, n_chunks, p, inv_scale,
                                                    partials, found_inf, stream);
    });
  });
}

void launch_segment_reduce(const double* values, int64_t n_values, const int64_t* start,
                           const int64_t* end, const int64_t* index, int64_t n_segments, bool max,
                           double* out, cudaStream_t stream) {
  if (n_segments == 0) return;
  if (max) {
    segment_reduce_kernel<true>
        <<<chunk_grid(n_segments), kThreads, 0, stream>>>(values, n_values, start, end, index, out);
  } else {
    segment_reduce_kernel<false>
        <<<chunk_grid(n_segments), kThreads, 0, stream>>>(values, n_values, start, end, index, out);
  }
}

void launch_norm_finish(const double* sums, int64_t n, NormKind kind, double p, void* out,
                        DType out_dtype, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 1024));
  if (out_dtype == DType::kFloat64) {
    norm_finish_kernel<double>
        <<<blocks, 256, 0, stream>>>(sums, n, kind, p, static_cast<double*>(out));
  } else {
    norm_finish_kernel<float>
        <<<blocks, 256, 0, stream>>>(sums, n, kind, p, static_cast<float*>(out));
  }
}

}  // namespace mopt_fast::cuda
