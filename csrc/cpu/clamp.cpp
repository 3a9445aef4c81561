// In-place clamp of a gradient list to [-clip_value, clip_value] in one read-write pass
// (torch's clip_grad_value_ makes two: clamp_min_ then clamp_max_). NaN stays NaN, as in torch.
#include "multi_tensor_apply.h"

#include <torch/library.h>

#include <cmath>

namespace mopt_fast::cpu {
namespace {

template <typename T>
void clamp_run(T* p, int64_t n, at::opmath_type<T> limit) {
  using C = at::opmath_type<T>;
  using IO = VecIO<T>;
  using CVec = typename IO::CVec;
  const CVec hi(limit), lo(-limit);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    CVec a, b;
    IO::load(p + i, a, b);
    // Vectorized clamp returns the NaN operand, like torch.clamp.
    IO::store(p + i, at::vec::clamp(a, lo, hi), at::vec::clamp(b, lo, hi));
  }
  for (; i < n; ++i) {
    const C x = static_cast<C>(p[i]);
    if (!std::isnan(x)) p[i] = static_cast<T>(std::min(std::max(x, -limit), limit));
  }
}

void clamp_inplace_cpu(at::TensorList tensors, double clip_value) {
  check_tensors(tensors, "clamp", /*writes=*/true);
  TORCH_CHECK_VALUE(clip_value >= 0.0, "mopt_fast.clamp: clip_value must be >= 0, got ",
                    clip_value);
  apply_inplace(tensors, [&](auto* p, int64_t n) { clamp_run(p, n, opmath(p, clip_value)); });
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("clamp_inplace", &clamp_inplace_cpu);
}

}  // namespace mopt_fast::cpu
