"""Fake (meta) kernels of the compiled ops, so torch.compile and FakeTensor tracing know the
output shapes without running anything. Registered for the C++ ops when they exist, and for the
Triton backend's ops when it is first used."""
from __future__ import annotations

from collections.abc import Callable

import torch


def _result_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _norm_outputs(tensors: list[torch.Tensor], per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _result_dtype(tensors)
    first = tensors[0]
    return (
        first.new_empty((), dtype=dtype),
        first.new_empty((len(tensors) if per_tensor else 0,), dtype=dtype),
    )


def _norm(tensors, norm_type, per_tensor):
    return _norm_outputs(tensors, per_tensor)


def _unscale_norm(tensors, inv_scale, found_inf, norm_type, per_tensor):
    return _norm_outputs(tensors, per_tensor)


def _writes_only(*args) -> None:
    return None


FAKES: dict[str, Callable] = {
    "norm": _norm,
    "unscale_norm": _unscale_norm,
    "scale_inplace": _writes_only,
    "clamp_inplace": _writes_only,
    "zero_inplace": _writes_only,
    "unscale_inplace": _writes_only,
}


def register(namespace: str = "mopt_fast") -> None:
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}")(fake)
