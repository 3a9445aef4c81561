// AMP unscale + inf/NaN check + clip-by-norm in one call: the read pass (norm of the unscaled
// values, found_inf set on any inf/NaN), then, unless found_inf is set, one pass multiplying by
// inv_scale * min(1, max_norm / (norm + 1e-6)). The same two passes as unscale_norm followed by
// scale_inplace, with one trip through the dispatcher and one list conversion instead of two.
#include "multi_tensor_apply.h"
#include "passes.h"

#include <torch/library.h>

namespace mopt_fast::cpu {
namespace {

at::Tensor unscale_clip_inplace_cpu(at::TensorList tensors, const at::Tensor& inv_scale,
                                    const at::Tensor& found_inf, double max_norm,
                                    double norm_type) {
  const at::Device cpu(at::kCPU);
  check_tensors(tensors, "unscale_clip", /*writes=*/true);
  check_scalar(inv_scale, "inv_scale", "unscale_clip", cpu, false);
  check_scalar(found_inf, "found_inf", "unscale_clip", cpu, false);
  TORCH_CHECK_VALUE(max_norm >= 0.0, "mopt_fast.unscale_clip: max_norm must be >= 0, got ",
                    max_norm);
  check_order(norm_type);
  const float inv = inv_scale.item<float>();
  // One plan for both passes: a non-dense tensor's contiguous copy, read by the first, is the one
  // the second scales and writes back.
  const Plan plan = make_plan(tensors);
  at::Tensor total = std::get<0>(reduce_plan(plan, tensors, norm_type, false, &inv, &found_inf));
  if (found_inf.item<float>() == 0.0f) {
    scale_list(tensors, scale_factor(inv_scale, total, max_norm), &plan);
  }
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(mopt_fast, CPU, m) {
  m.impl("unscale_clip_inplace", &unscale_clip_inplace_cpu);
}

}  // namespace mopt_fast::cpu
