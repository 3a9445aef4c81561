"""The Triton backend: the op set as Triton kernels, one kernel family per file, with the
signatures of the custom ops in csrc/registry.cpp. Runs on CUDA tensors, and on CPU tensors under
Triton's interpreter (TRITON_INTERPRET=1), which is how CI checks it.

The kernels are registered as torch custom ops, torch.ops.mopt_fast_triton.<op>, with the schemas
of mopt_fast._schema: the dispatcher then bumps the version of what they write and keeps them out
of autograd (mopt_fast._autograd), and torch.compile sees them as ops (mopt_fast._fake).

Installed as mopt_fast.triton_kernels (see setup.py), so that it cannot clash with other
top-level `triton_kernels` packages.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from mopt_fast import _autograd, _fake, _validate, registry
from mopt_fast._schema import SCHEMAS
from mopt_fast.triton_kernels._apply import on_device
from mopt_fast.triton_kernels.clamp import clamp_inplace
from mopt_fast.triton_kernels.norm import norm, unscale_norm
from mopt_fast.triton_kernels.scale import scale_inplace
from mopt_fast.triton_kernels.unscale import unscale_inplace
from mopt_fast.triton_kernels.zero import zero_inplace

NAMESPACE = "mopt_fast_triton"

KERNELS: dict[str, Callable] = {
    "norm": norm,
    "unscale_norm": unscale_norm,
    "scale_inplace": scale_inplace,
    "clamp_inplace": clamp_inplace,
    "zero_inplace": zero_inplace,
    "unscale_inplace": unscale_inplace,
}


def _on_tensors_device(op: Callable, writes_list: bool) -> Callable:
    """Triton launches on the current CUDA device: run each op on its tensors' device. An op that
    writes its list runs once per round of tensors that share no memory (a tensor listed twice
    is written twice, one after the other, as by torch's foreach ops)."""

    @functools.wraps(op)
    def run(tensors, *args):
        with on_device(tensors[0].device):
            if writes_list:
                rounds = _validate.disjoint_rounds(tensors)
                if rounds is not None:
                    _validate.check_tensors(tensors, op.__name__)  # all of them, before any write
                    for members in rounds:
                        op([tensors[i] for i in members], *args)
                    return None
            return op(tensors, *args)

    return run


def _register() -> dict[str, Callable]:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for name, kernel in KERNELS.items():
        lib.define(name + SCHEMAS[name])
        writes_list = SCHEMAS[name].startswith("(Tensor(a!)[]")
        for key in ("CUDA", "CPU"):  # CPU tensors only reach it under TRITON_INTERPRET=1
            lib.impl(name, _on_tensors_device(kernel, writes_list), key)
        _autograd.register(lib, name)
    _fake.register(NAMESPACE)
    registry.reject_sparse(lib)
    _LIBRARIES.append(lib)  # the registrations live as long as the library object
    return {name: getattr(getattr(torch.ops, NAMESPACE), name).default for name in KERNELS}


_LIBRARIES: list[torch.library.Library] = []
OPS = _register()
