// The passes the CPU ops are made of, shared with the ops that chain them in one call
// (unscale_clip.cpp: the AMP read pass, then the scaling pass).
#pragma once

#include <ATen/core/Tensor.h>

#include "multi_tensor_apply.h"

#include <optional>
#include <tuple>

namespace mopt_fast::cpu {

// The read pass (norm.cpp): total p-norm of tensors * inv_scale (inv_scale may be null), and the
// per-tensor norms when per_tensor is set; sets found_inf (may be null) on any inf/NaN. Checks
// the tensors and the order first.
std::tuple<at::Tensor, at::Tensor> reduce_list(at::TensorList tensors, double order,
                                               bool per_tensor, const float* inv_scale,
                                               const at::Tensor* found_inf, const char* op);

// Refuses a norm order that is not > 0 (inf is allowed).
void check_order(double order);

// reduce_list on a plan already made of `tensors` (already checked, order included): a call that
// chains the read pass and the scaling pass makes the plan once (unscale_clip.cpp).
std::tuple<at::Tensor, at::Tensor> reduce_plan(const Plan& plan, at::TensorList tensors,
                                               double order, bool per_tensor,
                                               const float* inv_scale, const at::Tensor* found_inf);

// scale * min(1, max_norm / (total_norm + 1e-6)) in the norm's precision (scale.cpp); absent
// parts count as 1.
double scale_factor(const std::optional<at::Tensor>& scale,
                    const std::optional<at::Tensor>& total_norm, double max_norm);

// The scaling pass (scale.cpp): tensors *= factor, in disjoint rounds (see for_each_round);
// nothing is written when factor is exactly 1. The tensors must have been checked. `whole`, when
// given, is the plan of the whole list, used when the list runs as one round.
void scale_list(at::TensorList tensors, double factor, const Plan* whole = nullptr);

}  // namespace mopt_fast::cpu
