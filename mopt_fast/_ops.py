"""The op set for Python: each op's name and schema, read from mopt_fast/ops.h (the one
declaration, which the C++ build includes too), with the fake kernel torch.compile traces with.
From this table come the torch backend's table and the Triton backend's custom ops
(mopt_fast.registry, mopt_fast.triton_kernels). The header is read as text, so the op set is here
without the compiled library; tests/test_op_set.py checks that every op exists on every backend
with the declared schema, and that the compiled library defines no op that is not declared.

Also here, mirroring csrc/common.h: the norm kinds, the chunk size and the result-dtype rule.
"""
from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


#: The op set's one declaration, shipped inside the package (setup.py package_data).
OP_SET_HEADER = Path(__file__).with_name("ops.h")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_ENTRY = re.compile(r'\bX\(\s*(\w+)\s*,\s*((?:"[^"\\]*"\s*)+)\)')


def parse_op_set(text: str) -> dict[str, str]:
    """name -> schema of every X(name, "schema" ...) entry of the op set header's text, with its
    adjacent string literals joined as the C++ compiler joins them. Raises ValueError on an entry
    of another form, or a name declared twice, rather than leave an op out."""
    code = _COMMENT.sub(" ", text.replace("\\\n", "\n"))  # line continuations, then comments
    entries = _ENTRY.findall(code)
    if not entries or len(entries) != len(re.findall(r"\bX\(", code)):
        raise ValueError('mopt_fast: the op set header has an entry not of the form X(name, "schema" ...)')
    schemas: dict[str, str] = {}
    for name, literals in entries:
        if name in schemas:
            raise ValueError(f"mopt_fast: op {name!r} is declared twice in the op set header")
        schemas[name] = "".join(re.findall(r'"([^"]*)"', literals))
    return schemas


#: Fake kernels of the ops that return tensors; an op that returns nothing gets _fake_writes_only.
_FAKES: dict[str, Callable] = {
    "norm": _fake_norm,
    "unscale_norm": _fake_unscale_norm,
    "unscale_clip_inplace": _fake_unscale_clip_inplace,
}


@dataclass(frozen=True)
class OpSpec:
    name: str
    schema: str  # as in mopt_fast/ops.h; (a!) marks what the op writes
    fake: Callable  # output shapes and dtypes, for FakeTensor tracing


def _op_specs(schemas: dict[str, str]) -> tuple[OpSpec, ...]:
    unknown = set(_FAKES) - set(schemas)
    if unknown:
        raise ValueError(f"mopt_fast: fake kernels for ops mopt_fast/ops.h does not declare: {sorted(unknown)}")
    specs = []
    for name, schema in schemas.items():
        fake = _FAKES.get(name) or (_fake_writes_only if schema.endswith("-> ()") else None)
        if fake is None:
            raise ValueError(f"mopt_fast: op {name!r} returns tensors; give it a fake kernel in _ops._FAKES")
        specs.append(OpSpec(name, schema, fake))
    return tuple(specs)


OPS: tuple[OpSpec, ...] = _op_specs(parse_op_set(OP_SET_HEADER.read_text()))
NAMES: tuple[str, ...] = tuple(spec.name for spec in OPS)


def register_fakes(namespace: str) -> None:
    """The fake kernel of every op of `namespace` (mopt_fast or mopt_fast_triton)."""
    for spec in OPS:
        torch.library.register_fake(f"{namespace}::{spec.name}")(spec.fake)
