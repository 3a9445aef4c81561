// The mopt_fast op set: one schema per op. Kernels register themselves per device
// (csrc/cpu/*.cpp for CPU, csrc/cuda for CUDA); fake kernels for torch.compile live in
// mopt_fast/_fake.py. Every op takes a non-empty list of tensors on one device; the Python layer
// groups by device and never calls an op with an empty list.
#include <torch/library.h>

TORCH_LIBRARY(mopt_fast, m) {
  // Total p-norm (p > 0 or inf) of the list, and the per-tensor norms when per_tensor is set (else
  // an empty tensor). fp32 result, fp64 when any input is fp64.
  m.def("norm(Tensor[] tensors, float norm_type, bool per_tensor) -> (Tensor, Tensor)");
  // Read-only AMP pass: norm of tensors * inv_scale; sets found_inf when any value is inf/NaN.
  m.def(
      "unscale_norm(Tensor[] tensors, Tensor inv_scale, Tensor(a!) found_inf, float norm_type, "
      "bool per_tensor) -> (Tensor, Tensor)");
  // tensors *= scale * min(1, max_norm / (total_norm + 1e-6)); skipped when found_inf is set.
  m.def(
      "scale_inplace(Tensor(a!)[] tensors, Tensor? scale, Tensor? total_norm, float max_norm, "
      "Tensor? found_inf) -> ()");
  // tensors = clamp(tensors, -clip_value, clip_value) in one pass.
  m.def("clamp_inplace(Tensor(a!)[] tensors, float clip_value) -> ()");
  m.def("zero_inplace(Tensor(a!)[] tensors) -> ()");
  // torch._amp_foreach_non_finite_check_and_unscale_ semantics.
  m.def("unscale_inplace(Tensor(a!)[] tensors, Tensor(b!) found_inf, Tensor inv_scale) -> ()");
}
