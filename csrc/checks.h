// Checks shared by the CPU and CUDA bindings. They run before any kernel writes, so a rejected
// call leaves every tensor as it was.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace mopt_fast {

// Every tensor defined, dense (strided), floating point (fp32/fp64/fp16/bf16) and on `device`.
inline void check_tensors(at::TensorList tensors, const char* op, const at::Device& device) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), "mopt_fast.", op, ": tensor ", i, " is undefined");
    TORCH_CHECK_VALUE(t.layout() == at::kStrided, "mopt_fast.", op, ": tensor ", i, " has layout ",
                      t.layout(), "; only dense (strided) gradients are supported, not sparse ones");
    TORCH_CHECK_VALUE(t.device() == device, "mopt_fast.", op, ": tensor ", i, " is on ", t.device(),
                      " but tensor 0 is on ", device, "; one call takes tensors on one device");
    const auto dtype = t.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16,
                     "mopt_fast.", op, ": tensor ", i, " has dtype ", dtype,
                     "; supported dtypes are float32, float64, float16 and bfloat16");
  }
}

// A one-element float32 (or, with allow_double, float64) tensor on `device`: found_inf, inv_scale,
// a scale or a norm.
inline void check_scalar(const at::Tensor& t, const char* name, const char* op,
                         const at::Device& device, bool allow_double) {
  TORCH_CHECK_VALUE(t.device() == device, "mopt_fast.", op, ": ", name, " must be on ", device,
                    " like the gradients, got ", t.device());
  const bool dtype_ok =
      t.scalar_type() == at::kFloat || (allow_double && t.scalar_type() == at::kDouble);
  TORCH_CHECK_VALUE(t.numel() == 1 && dtype_ok, "mopt_fast.", op, ": ", name,
                    " must be a one-element ", allow_double ? "float32 or float64" : "float32",
                    " tensor, got ", t.scalar_type(), " of shape ", t.sizes());
}

}  // namespace mopt_fast
