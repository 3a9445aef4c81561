// In-place scale by scale * min(1, max_norm / (norm + 1e-6)), computed on the device by every
// block from device scalars; the whole pass is skipped on the device when found_inf is set or the
// factor is exactly 1.
#include "multi_tensor_apply.cuh"

namespace mopt_fast::cuda {
namespace {

__device__ __forceinline__ double load_scalar(DeviceScalar s) {
  return s.dtype == DType::kFloat64 ? *static_cast<const double*>(s.ptr)
                                    : static_cast<double>(*static_cast<const float*>(s.ptr));
}

// The factor in the norm's precision, as torch computes the clip coefficient.
template <typename F>
__device__ __forceinline__ F factor_in(DeviceScalar scale, DeviceScalar norm, F max_norm) {
  F f = scale.ptr ? static_cast<F>(load_scalar(scale)) : F(1);
  if (norm.ptr) f *= clip_coefficient(static_cast<F>(load_scalar(norm)), max_norm);
  return f;
}

template <typename T>
struct ScaleOp {
  acc_t<T> factor;
  __device__ __forceinline__ void operator()(T& x) { x = from_acc<T>(to_acc(x) * factor); }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(ChunkTable table, DeviceScalar scale, DeviceScalar norm, double max_norm,
                 const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const bool wide =
      norm.ptr ? norm.dtype == DType::kFloat64 : (scale.ptr && scale.dtype == DType::kFloat64);
  const double factor =
      wide ? factor_in<double>(scale, norm, max_norm)
           : static_cast<double>(factor_in<float>(scale, norm, static_cast<float>(max_norm)));
  if (factor == 1.0) return;  // x * 1 == x bit for bit
  const ChunkRange chunk = this_chunk(table);
  ScaleOp<T> op{static_cast<acc_t<T>>(factor)};
  visit_chunk<true>(static_cast<T*>(chunk.base), chunk.begin, chunk.end, op);
}

}  // namespace

void launch_scale(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                  DeviceScalar scale, DeviceScalar norm, double max_norm, const float* found_inf,
                  cudaStream_t stream) {
  if (n_chunks == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<chunk_grid(n_chunks), kThreads, 0, stream>>>(
        ChunkTable{table, n_tensors, n_chunks}, scale, norm, max_norm, found_inf);
  });
}

}  // namespace mopt_fast::cuda
