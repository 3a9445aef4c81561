// In-place clamp to [-limit, limit] in one pass; NaN stays NaN, as in torch.clamp.
#include "multi_tensor_apply.cuh"

namespace mopt_fast::cuda {
namespace {

template <typename T>
struct ClampOp {
  acc_t<T> limit;
  __device__ __forceinline__ void operator()(T& x) {
    const acc_t<T> v = to_acc(x);
    if (v != v) return;
    x = from_acc<T>(v < -limit ? -limit : (v > limit ? limit : v));
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) clamp_kernel(ChunkTable table, double limit) {
  const ChunkRange chunk = this_chunk(table);
  ClampOp<T> op{static_cast<acc_t<T>>(limit)};
  visit_chunk<true>(static_cast<T*>(chunk.base), chunk.begin, chunk.end, op);
}

}  // namespace

void launch_clamp(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                  double limit, cudaStream_t stream) {
  if (n_chunks == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    clamp_kernel<T><<<chunk_grid(n_chunks), kThreads, 0, stream>>>(
        ChunkTable{table, n_tensors, n_chunks}, limit);
  });
}

}  // namespace mopt_fast::cuda
