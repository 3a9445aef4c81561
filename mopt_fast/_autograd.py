"""What autograd sees of ops registered from Python (the Triton backend): the Python twin of
csrc/autograd.cpp, which serves the C++ ops. An op is not differentiable and records no history
(torch's gradient utilities run under no_grad), and every tensor it writes gets its version
bumped, as torch's in-place ops do, so that a graph which saved it refuses to backpropagate
through the new values. Inference tensors are refused outside inference mode before anything is
written."""
from __future__ import annotations

from typing import Any

import torch
from torch import _C

# torch's own message (c10::VariableVersion::bump).
INFERENCE_UPDATE = (
    "Inplace update to inference tensor outside InferenceMode is not allowed.You can make a clone to "
    "get a normal tensor before doing inplace update.See https://github.com/pytorch/rfcs/pull/17 for "
    "more details."
)


def _written(schema: Any, args: tuple) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for arg, value in zip(schema.arguments, args):
        if arg.alias_info is None or not arg.alias_info.is_write or value is None:
            continue
        out.extend([value] if isinstance(value, torch.Tensor) else value)
    return out


def register(lib: torch.library.Library, name: str) -> None:
    """Autograd and ADInplaceOrView kernels for the op `name` of `lib`'s namespace."""
    op = getattr(getattr(torch.ops, lib.ns), name).default
    schema = op._schema

    def autograd_kernel(keyset: Any, *args: Any) -> Any:
        with _C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _C._after_autograd_keyset, *args)

    lib.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    if not schema.is_mutable:
        return

    def inplace_kernel(keyset: Any, *args: Any) -> Any:
        written = _written(schema, args)
        if not torch.is_inference_mode_enabled() and any(t.is_inference() for t in written):
            raise RuntimeError(INFERENCE_UPDATE)
        with _C._AutoDispatchBelowADInplaceOrView():
            result = op.redispatch(keyset & _C._after_ADInplaceOrView_keyset, *args)
        for t in written:
            torch.autograd.graph.increment_version(t)
        return result

    lib.impl(name, inplace_kernel, "ADInplaceOrView", with_keyset=True)
