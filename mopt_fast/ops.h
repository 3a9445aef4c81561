// The mopt_fast op set, declared once for every backend and both languages: X(name, schema) per
// op, where (a!) marks what the op writes.
//  - C++ includes it as an X-macro: csrc/registry.cpp defines the ops from it, and
//    csrc/autograd.cpp registers their Autograd and ADInplaceOrView kernels.
//  - Python reads it as text (mopt_fast/_ops.py, at import): the Triton backend's ops and the fake
//    kernels come from it. It ships inside the package for that, so the pure-torch and Triton
//    backends have the op set without the compiled library.
// Keep every entry of the form X(name, "schema" ...): a name, then only string literals. An op
// that returns tensors also needs its fake kernel in mopt_fast/_ops.py (_FAKES).
#pragma once

#define MOPT_FAST_OPS(X)                                                                       \
  /* Total p-norm (p > 0 or inf) of the list, and the per-tensor norms when per_tensor is  */  \
  /* set (else an empty tensor). fp32 result, fp64 when any input is fp64.                 */  \
  X(norm, "(Tensor[] tensors, float norm_type, bool per_tensor) -> (Tensor, Tensor)")          \
  /* Read-only AMP pass: norm of tensors * inv_scale; sets found_inf on any inf/NaN.       */  \
  X(unscale_norm,                                                                              \
    "(Tensor[] tensors, Tensor inv_scale, Tensor(a!) found_inf, float norm_type, "             \
    "bool per_tensor) -> (Tensor, Tensor)")                                                    \
  /* tensors *= scale * min(1, max_norm / (total_norm + 1e-6)); skipped if found_inf set.  */  \
  X(scale_inplace,                                                                             \
    "(Tensor(a!)[] tensors, Tensor? scale, Tensor? total_norm, float max_norm, "               \
    "Tensor? found_inf) -> ()")                                                                \
  /* tensors = clamp(tensors, -clip_value, clip_value) in one pass.                        */  \
  X(clamp_inplace, "(Tensor(a!)[] tensors, float clip_value) -> ()")                           \
  X(zero_inplace, "(Tensor(a!)[] tensors) -> ()")                                              \
  /* torch._amp_foreach_non_finite_check_and_unscale_ semantics.                           */  \
  X(unscale_inplace, "(Tensor(a!)[] tensors, Tensor(b!) found_inf, Tensor inv_scale) -> ()")   \
  /* unscale_norm, then (unless found_inf is set) scale_inplace by inv_scale and the clip   */ \
  /* coefficient of the returned norm: the AMP clip in one call.                            */ \
  X(unscale_clip_inplace,                                                                      \
    "(Tensor(a!)[] tensors, Tensor inv_scale, Tensor(b!) found_inf, float max_norm, "          \
    "float norm_type) -> Tensor")
