// In-place zero of a gradient list: all-bits-zero is +0.0 in every floating dtype, so each work
// item is one memset over its bytes.
#include "multi_tensor_apply.h"

#include <torch/library.h>

#include <cstring>

namespace mopt_fast::cpu {
namespace {

void zero_inplace_cpu(at::TensorList tensors) {
  check_tensors(tensors, "zero", /*writes=*/true);
  apply_inplace(tensors, [](auto* p, int64_t n) {
    std::memset(static_cast<void*>(p), 0, static_cast<size_t>(n) * sizeof(*p));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("zero_inplace", &zero_inplace_cpu);
}

}  // namespace mopt_fast::cpu
