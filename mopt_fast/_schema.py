"""The op set's schemas, as csrc/registry.cpp declares them for torch.ops.mopt_fast. The Triton
backend registers the same ops under torch.ops.mopt_fast_triton; tests/test_autograd.py checks
that both namespaces agree with this table. (a!) marks what an op writes."""
from __future__ import annotations

SCHEMAS: dict[str, str] = {
    "norm": "(Tensor[] tensors, float norm_type, bool per_tensor) -> (Tensor, Tensor)",
    "unscale_norm": (
        "(Tensor[] tensors, Tensor inv_scale, Tensor(a!) found_inf, float norm_type, bool per_tensor)"
        " -> (Tensor, Tensor)"
    ),
    "scale_inplace": (
        "(Tensor(a!)[] tensors, Tensor? scale, Tensor? total_norm, float max_norm, Tensor? found_inf) -> ()"
    ),
    "clamp_inplace": "(Tensor(a!)[] tensors, float clip_value) -> ()",
    "zero_inplace": "(Tensor(a!)[] tensors) -> ()",
    "unscale_inplace": "(Tensor(a!)[] tensors, Tensor(b!) found_inf, Tensor inv_scale) -> ()",
}
