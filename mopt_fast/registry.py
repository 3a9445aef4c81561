"""Op registry: which kernel runs an op, per backend and device.

Backends, fastest first for their devices:
  cuda    CUDA C++ kernels (csrc/cuda) for CUDA tensors, when built against a CUDA torch
  triton  Triton kernels (triton_kernels/) for CUDA tensors; for CPU tensors too under Triton's
          interpreter (TRITON_INTERPRET=1), which is how CI runs them
  cpu     C++ kernels (csrc/cpu) for CPU tensors
  torch   pure-torch ops (mopt_fast/torch_ops), any device, no build needed

The compiled backends are torch custom ops (torch.ops.mopt_fast.<op>), so torch's dispatcher
picks the CPU or CUDA kernel and torch.compile sees them. The default backend of a device is the
fastest one available; `use_backend(name)` or the MOPT_FAST_BACKEND environment variable (read at
import) force one.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from mopt_fast import _extension, _ops, torch_ops

# The op set (mopt_fast/ops.h, read by mopt_fast._ops): name -> pure-torch implementation, found by
# the op's name in mopt_fast.torch_ops. The compiled backends serve the same names through
# torch.ops.mopt_fast.<name> and torch.ops.mopt_fast_triton.<name>.
OPS: dict[str, Callable] = {name: getattr(torch_ops, name) for name in _ops.NAMES}

BACKENDS = ("cuda", "triton", "cpu", "torch")
# Device types each backend runs; None: any.
_DEVICE_TYPES: dict[str, tuple[str, ...] | None] = {
    "cuda": ("cuda",),
    "triton": ("cuda",),
    "cpu": ("cpu",),
    "torch": None,
}


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """None when the backend can run here, else why not. Cached: it is asked on every op call,
    and what is installed does not change within a process."""
    if name == "torch":
        return None
    if name == "cpu":
        return None if _extension.COMPILED else _extension.REASON
    if name == "cuda":
        if not _extension.COMPILED:
            return _extension.REASON
        if not _extension.WITH_CUDA:
            return "mopt_fast._C was built without CUDA (needs a CUDA build of torch and nvcc)"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if not (torch.cuda.is_available() or _triton_interpreting()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
        return None
    return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, fastest first."""
    return [b for b in BACKENDS if unavailable_reason(b) is None]


def _compiled_table() -> dict[str, Callable]:
    return {op: getattr(torch.ops.mopt_fast, op).default for op in OPS}


def _reject_sparse(op: str) -> Callable:
    def kernel(*args, **kwargs):
        raise ValueError(
            f"mopt_fast.{op}: a tensor has a sparse layout; only dense (strided) gradients are "
            "supported, not sparse ones"
        )

    return kernel


# A sparse tensor in a list makes torch's dispatcher pick a sparse dispatch key, where the op would
# otherwise fail with a dump of registered kernels; this gives the same clear error as the dense
# kernels' own checks, before anything is written.
_SPARSE_KEYS = ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA")


def reject_sparse(lib: torch.library.Library) -> None:
    """Registers the clear sparse-layout error for every op of `lib`'s namespace."""
    for op in OPS:
        for key in _SPARSE_KEYS:
            lib.impl(op, _reject_sparse(op), key)


_TABLES: dict[str, dict[str, Callable]] = {"torch": dict(OPS)}
if _extension.COMPILED:
    _TABLES["cpu"] = _compiled_table()
    if _extension.WITH_CUDA:
        _TABLES["cuda"] = _TABLES["cpu"]  # the same ops: torch's dispatcher picks the CUDA kernels
    _sparse_lib = torch.library.Library("mopt_fast", "IMPL")
    reject_sparse(_sparse_lib)


def _table(name: str) -> dict[str, Callable]:
    if name not in _TABLES and name == "triton":
        # Imported on first use: importing triton costs time that CPU-only users need not pay.
        if TYPE_CHECKING:  # the source tree's triton_kernels/ ships as mopt_fast.triton_kernels (setup.py)
            import triton_kernels
        else:
            from mopt_fast import triton_kernels

        _TABLES["triton"] = dict(triton_kernels.OPS)
    return _TABLES[name]


def _device_types(name: str) -> tuple[str, ...] | None:
    if name == "triton" and _triton_interpreting():
        return ("cuda", "cpu")
    return _DEVICE_TYPES[name]


def _check_name(name: str) -> str:
    reason = unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"mopt_fast backend {name!r} is not available: {reason}")
    return name


_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("mopt_fast_backend", default=None)
_env_backend = os.environ.get("MOPT_FAST_BACKEND") or None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every mopt_fast op inside the block on backend `name` (see available_backends())."""
    token = _forced.set(_check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def _default_backend(device_type: str) -> str:
    if device_type == "cpu" and "cpu" in _TABLES:
        return "cpu"
    if device_type == "cuda":
        for name in ("cuda", "triton"):
            if unavailable_reason(name) is None:
                return name
    return "torch"


def backend_for(device: torch.device) -> str:
    """The backend that runs ops on tensors of `device` right now."""
    name = _forced.get() or _env_backend
    if name is None:
        return _default_backend(device.type)
    _check_name(name)
    devices = _device_types(name)
    if devices is not None and device.type not in devices:
        raise RuntimeError(
            f"mopt_fast backend {name!r} runs {'/'.join(devices)} tensors, not {device.type} "
            "ones; use_backend('torch') runs on any device"
        )
    return name


def kernel(op: str, device: torch.device) -> Callable:
    """The implementation of `op` for tensors on `device`."""
    return _table(backend_for(device))[op]
