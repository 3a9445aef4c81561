"""The Triton backend: the op set as Triton kernels, one kernel family per file, with the
signatures the op set declares (mopt_fast/ops.h). Runs on CUDA tensors, and on CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1), which is how CI checks it.

The kernels are registered as torch custom ops, torch.ops.mopt_fast_triton.<op>, from the op table
of mopt_fast._ops (schemas and fake kernels, so torch.compile sees them as ops); the dispatcher
bumps the version of what they write and keeps them out of autograd (mopt_fast._autograd).

Installed as mopt_fast.triton_kernels (see setup.py), so that it cannot clash with other
top-level `triton_kernels` packages.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from mopt_fast import _autograd, _ops, registry
from mopt_fast.triton_kernels import clamp, norm, scale, unscale, unscale_clip, zero
from mopt_fast.triton_kernels._apply import on_device

# One kernel family per file; a new op's file joins this tuple.
_KERNEL_MODULES = (clamp, norm, scale, unscale, unscale_clip, zero)

NAMESPACE = "mopt_fast_triton"

# Each op's kernel, found by the op's name in the kernel modules.
KERNELS: dict[str, Callable] = {
    name: next(getattr(m, name) for m in _KERNEL_MODULES if hasattr(m, name)) for name in _ops.NAMES
}


def _on_tensors_device(op: Callable) -> Callable:
    """Triton launches on the current CUDA device: run each op on its tensors' device."""

    @functools.wraps(op)
    def run(tensors, *args):
        with on_device(tensors[0].device):
            return op(tensors, *args)

    return run


def _register() -> dict[str, Callable]:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for spec in _ops.OPS:
        lib.define(spec.name + spec.schema)
        kernel = _on_tensors_device(KERNELS[spec.name])
        for key in ("CUDA", "CPU"):  # CPU tensors only reach it under TRITON_INTERPRET=1
            lib.impl(spec.name, kernel, key)
        _autograd.register(lib, spec.name)
    _ops.register_fakes(NAMESPACE)
    registry.reject_sparse(lib)
    _LIBRARIES.append(lib)  # the registrations live as long as the library object
    return {name: getattr(getattr(torch.ops, NAMESPACE), name).default for name in _ops.NAMES}


_LIBRARIES: list[torch.library.Library] = []
OPS = _register()
