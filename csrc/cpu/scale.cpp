// In-place scale of a gradient list by a factor that lives in tensors, never on the host:
//   factor = scale * min(1, max_norm / (total_norm + 1e-6))
// where either part may be absent. This one pass serves scale_grads_ (scale only), clipping
// (total_norm only) and AMP unscale + clip (both). When found_inf is given and set, nothing is
// written (the optimizer step will be skipped); when the factor is exactly 1, nothing needs
// writing.
#include "multi_tensor_apply.h"
#include "passes.h"

#include <torch/library.h>

#include <cmath>

namespace mopt_fast::cpu {
namespace {

template <typename T>
void scale_run(T* p, int64_t n, at::opmath_type<T> factor) {
  using IO = VecIO<T>;
  using CVec = typename IO::CVec;
  const CVec f(factor);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    CVec a, b;
    IO::load(p + i, a, b);
    IO::store(p + i, a * f, b * f);
  }
  for (; i < n; ++i) p[i] = static_cast<T>(static_cast<at::opmath_type<T>>(p[i]) * factor);
}

void scale_inplace_cpu(at::TensorList tensors, const std::optional<at::Tensor>& scale,
                       const std::optional<at::Tensor>& total_norm, double max_norm,
                       const std::optional<at::Tensor>& found_inf) {
  check_scale_args(tensors, scale, total_norm, max_norm, found_inf, at::Device(at::kCPU));
  if (found_inf && found_inf->item<double>() != 0.0) return;
  scale_list(tensors, scale_factor(scale, total_norm, max_norm));
}

}  // namespace

double scale_factor(const std::optional<at::Tensor>& scale,
                    const std::optional<at::Tensor>& total_norm, double max_norm) {
  const double s = scale ? scale->item<double>() : 1.0;
  if (!total_norm) return s;
  if (total_norm->scalar_type() == at::kDouble) {
    return s * clip_coefficient<double>(total_norm->item<double>(), max_norm);
  }
  return static_cast<float>(s) *
         clip_coefficient<float>(total_norm->item<float>(), static_cast<float>(max_norm));
}

void scale_list(at::TensorList tensors, double factor, const Plan* whole) {
  if (factor == 1.0) return;  // x * 1 == x bit for bit, NaN and -0 included.
  apply_inplace(
      tensors, [&](auto* p, int64_t n) { scale_run(p, n, opmath(p, factor)); }, true, whole);
}

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("scale_inplace", &scale_inplace_cpu);
}

}  // namespace mopt_fast::cpu
