"""The Triton backend: the op set as Triton kernels, one kernel family per file, with the
signatures of the custom ops in csrc/registry.cpp. Runs on CUDA tensors, and on CPU tensors under
Triton's interpreter (TRITON_INTERPRET=1), which is how CI checks it.

Installed as mopt_fast.triton_kernels (see setup.py), so that it cannot clash with other
top-level `triton_kernels` packages.
"""
import functools

from mopt_fast.triton_kernels._apply import on_device
from mopt_fast.triton_kernels.clamp import clamp_inplace
from mopt_fast.triton_kernels.norm import norm, unscale_norm
from mopt_fast.triton_kernels.scale import scale_inplace
from mopt_fast.triton_kernels.unscale import unscale_inplace
from mopt_fast.triton_kernels.zero import zero_inplace



def _on_tensors_device(op):
    """Triton launches on the current CUDA device: run each op on its tensors' device."""

    @functools.wraps(op)
    def run(tensors, *args):
        with on_device(tensors[0].device):
            return op(tensors, *args)

    return run


OPS = {
    name: _on_tensors_device(op)
    for name, op in {
        "norm": norm,
        "unscale_norm": unscale_norm,
        "scale_inplace": scale_inplace,
        "clamp_inplace": clamp_inplace,
        "zero_inplace": zero_inplace,
        "unscale_inplace": unscale_inplace,
    }.items()
}
