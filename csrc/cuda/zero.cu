// In-place zero: write-only 16-byte stores (all-bits-zero is +0.0 in every float dtype).
#include "multi_tensor_apply.cuh"

namespace mopt_fast::cuda {
namespace {

__global__ void __launch_bounds__(kThreads) zero_kernel(ChunkTable table, int element_size) {
  const ChunkRange chunk = this_chunk(table);
  const int64_t begin = chunk.begin * element_size;
  const int64_t end = chunk.end * element_size;
  char* p = static_cast<char*>(chunk.base);
  int64_t i = begin;
  if (reinterpret_cast<uintptr_t>(p + begin) % 16 == 0) {
    const int64_t n_vec = (end - begin) / 16;
    uint4* pv = reinterpret_cast<uint4*>(p + begin);
    for (int64_t j = threadIdx.x; j < n_vec; j += blockDim.x) pv[j] = make_uint4(0, 0, 0, 0);
    i = begin + n_vec * 16;
  }
  for (int64_t j = i + threadIdx.x; j < end; j += blockDim.x) p[j] = 0;
}

}  // namespace

void launch_zero(DType dtype, const int64_t* table, int64_t n_tensors, int64_t n_chunks,
                 cudaStream_t stream) {
  if (n_chunks == 0) return;
  int element_size = 4;
  dispatch_dtype(dtype, [&](auto tag) { element_size = static_cast<int>(sizeof(tag)); });
  zero_kernel<<<chunk_grid(n_chunks), kThreads, 0, stream>>>(ChunkTable{table, n_tensors, n_chunks},
                                                             element_size);
}

}  // namespace mopt_fast::cuda
