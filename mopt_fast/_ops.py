"""The op set, declared once for Python: each op's name, schema and fake kernel. From this table
come the torch backend's table and the Triton backend's custom ops (mopt_fast.registry,
mopt_fast.triton_kernels), and the fake kernels torch.compile traces with. The C++ ops declare the
same set in csrc/ops.h; tests/test_op_set.py checks the two agree and that every op exists on
every backend.

Also here, mirroring csrc/common.h: the norm kinds, the chunk size and the result-dtype rule.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: The end of the message every backend's kernel raises (ValueError) for a list that spans
#: devices; the functional API splits such a list by device when it sees it (csrc/checks.h says
#: the same).
ONE_DEVICE = "one call takes tensors on one device"

#: Elements per work item / block / program on every backend (csrc/common.h kChunkElems).
CHUNK_ELEMS = 1 << 16


class NormKind(enum.IntEnum):
    """The norm orders with kernels of their own; every other p > 0 is LP (csrc/common.h)."""

    L2 = 0
    L1 = 1
    LINF = 2
    LP = 3


def norm_kind(p: float) -> NormKind:
    if p == 2.0:
        return NormKind.L2
    if p == 1.0:
        return NormKind.L1
    if math.isinf(p):
        return NormKind.LINF
    return NormKind.LP


def result_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """The dtype of a norm: float32, or float64 when any tensor is float64 (fp16/bf16 values are
    accumulated in fp32, so their norms do not overflow at 65504)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _one_device(tensors: list[torch.Tensor]) -> None:
    """The kernels' device check, in the fake kernels too: the dispatcher sends a list that mixes
    meta tensors with others to the fake (Meta) kernel, which must refuse it as the real ones do,
    so the functional API splits the list by device (ONE_DEVICE)."""
    first = tensors[0].device
    for i, t in enumerate(tensors):
        if t.device != first:
            raise ValueError(f"mopt_fast: tensor {i} is on {t.device} but tensor 0 is on {first}; {ONE_DEVICE}")


def _norm_outputs(tensors: list[torch.Tensor], per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _one_device(tensors)
    dtype = result_dtype(tensors)
    first = tensors[0]
    return (
        first.new_empty((), dtype=dtype),
        first.new_empty((len(tensors) if per_tensor else 0,), dtype=dtype),
    )


def _fake_norm(tensors, norm_type, per_tensor):
    return _norm_outputs(tensors, per_tensor)


def _fake_unscale_norm(tensors, inv_scale, found_inf, norm_type, per_tensor):
    return _norm_outputs(tensors, per_tensor)


def _fake_unscale_clip_inplace(tensors, inv_scale, found_inf, max_norm, norm_type):
    return _norm_outputs(tensors, False)[0]


def _fake_writes_only(tensors, *args) -> None:
    _one_device(tensors)
    return None


@dataclass(frozen=True)
class OpSpec:
    name: str
    schema: str  # as in csrc/ops.h; (a!) marks what the op writes
    fake: Callable  # output shapes and dtypes, for FakeTensor tracing


OPS: tuple[OpSpec, ...] = (
    OpSpec("norm", "(Tensor[] tensors, float norm_type, bool per_tensor) -> (Tensor, Tensor)", _fake_norm),
    OpSpec(
        "unscale_norm",
        "(Tensor[] tensors, Tensor inv_scale, Tensor(a!) found_inf, float norm_type, bool per_tensor)"
        " -> (Tensor, Tensor)",
        _fake_unscale_norm,
    ),
    OpSpec(
        "scale_inplace",
        "(Tensor(a!)[] tensors, Tensor? scale, Tensor? total_norm, float max_norm, Tensor? found_inf) -> ()",
        _fake_writes_only,
    ),
    OpSpec("clamp_inplace", "(Tensor(a!)[] tensors, float clip_value) -> ()", _fake_writes_only),
    OpSpec("zero_inplace", "(Tensor(a!)[] tensors) -> ()", _fake_writes_only),
    OpSpec(
        "unscale_inplace",
        "(Tensor(a!)[] tensors, Tensor(b!) found_inf, Tensor inv_scale) -> ()",
        _fake_writes_only,
    ),
    OpSpec(
        "unscale_clip_inplace",
        "(Tensor(a!)[] tensors, Tensor inv_scale, Tensor(b!) found_inf, float max_norm, float norm_type) -> Tensor",
        _fake_unscale_clip_inplace,
    ),
)

NAMES: tuple[str, ...] = tuple(spec.name for spec in OPS)


def register_fakes(namespace: str) -> None:
    """The fake kernel of every op of `namespace` (mopt_fast or mopt_fast_triton)."""
    for spec in OPS:
        torch.library.register_fake(f"{namespace}::{spec.name}")(spec.fake)
