// In-place AMP unscale with torch._amp_foreach_non_finite_check_and_unscale_ semantics.
#include "multi_tensor_apply.cuh"

namespace mopt_fast::cuda {
namespace {

template <typename T>
struct UnscaleOp {
  acc_t<T> inv_scale;
  acc_t<T> check = acc_t<T>(0);  // NaN exactly when an inf/NaN input was seen
  __device__ __forceinline__ void operator()(T& x) {
    const acc_t<T> v = to_acc(x);
    check += v * acc_t<T>(0);
    x = from_acc<T>(v * inv_scale);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    unscale_kernel(ChunkTable table, const float* inv_scale, float* found_inf) {
  const ChunkRange chunk = this_chunk(table);
  UnscaleOp<T> op{static_cast<acc_t<T>>(*inv_scale)};
  visit_chunk<true>(static_cast<T*>(chunk.base), chunk.begin, chunk.end, op);
  if (__syncthreads_or(op.check != op.check) && threadIdx.x == 0) *found_inf = 1.0f;
}

}  // namespace

void launch_unscale(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                    const float* inv_scale, float* found_inf, cudaStream_t stream) {
  if (n_chunks == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    unscale_kernel<T><<<chunk_grid(n_chunks), kThreads, 0, stream>>>(
        ChunkTable{table, n_tensors, n_chunks}, inv_scale, found_inf);
  });
}

}  // namespace mopt_fast::cuda
