// In-place AMP unscale with torch._amp_foreach_non_finite_check_and_unscale_ semantics: every
// gradient is multiplied by inv_scale, and found_inf is set to 1 when any input value is inf or
// NaN (it is never cleared). One read-write pass; with inv_scale == 1 it only reads.
#include "multi_tensor_apply.h"

#include <torch/library.h>

#include <cmath>

namespace mopt_fast::cpu {
namespace {

// Returns true when the run holds an inf or NaN. x * 0 is NaN exactly for non-finite x, so one
// extra fused multiply-add per vector carries the check.
template <typename T, bool kWrite>
bool unscale_run(T* p, int64_t n, at::opmath_type<T> inv_scale) {
  using C = at::opmath_type<T>;
  using IO = VecIO<T>;
  using CVec = typename IO::CVec;
  const CVec s(inv_scale), zero(0);
  CVec check(0);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    CVec a, b;
    IO::load(p + i, a, b);
    check = at::vec::fmadd(a, zero, check);
    check = at::vec::fmadd(b, zero, check);
    if constexpr (kWrite) IO::store(p + i, a * s, b * s);
  }
  alignas(64) C lanes[CVec::size()];
  check.store(lanes);
  bool nonfinite = false;
  for (int64_t k = 0; k < CVec::size(); ++k) nonfinite |= std::isnan(lanes[k]);
  for (; i < n; ++i) {
    const C x = static_cast<C>(p[i]);
    nonfinite |= !std::isfinite(x);
    if constexpr (kWrite) p[i] = static_cast<T>(x * inv_scale);
  }
  return nonfinite;
}

void unscale_inplace_cpu(at::TensorList tensors, const at::Tensor& found_inf,
                         const at::Tensor& inv_scale) {
  check_tensors(tensors, "unscale", /*writes=*/true);
  const at::Device cpu(at::kCPU);
  check_scalar(found_inf, "found_inf", "unscale", cpu, false);
  check_scalar(inv_scale, "inv_scale", "unscale", cpu, false);
  const float s = inv_scale.item<float>();
  const bool write = s != 1.0f;
  const bool any_nonfinite = apply_inplace(
      tensors,
      [&](auto* p, int64_t n) {
        using T = std::remove_pointer_t<decltype(p)>;
        return write ? unscale_run<T, true>(p, n, opmath(p, s))
                     : unscale_run<T, false>(p, n, opmath(p, s));
      },
      write);
  if (any_nonfinite) found_inf.fill_(1.0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("unscale_inplace", &unscale_inplace_cpu);
}

}  // namespace mopt_fast::cpu
