"""Loads the compiled kernels (mopt_fast._C) and says why when they cannot be used.

Importing _C registers the C++ ops with torch (torch.ops.mopt_fast.*). Without it — a plain source
checkout, or kernels built for a vector ISA this CPU lacks — everything still runs on the pure-torch
backend, and `mopt_fast.build_info()` says why.
"""
from __future__ import annotations

import warnings

import torch

COMPILED: bool = False
WITH_CUDA: bool = False
CPU_ISA: str | None = None
REASON: str = ""

# torch.backends.cpu.get_cpu_capability() names, and what each ISA build needs of them.
_ISA_NEEDS = {"default": set(), "avx2": {"AVX2", "AVX512"}, "avx512": {"AVX512"}}


def _load() -> None:
    global COMPILED, WITH_CUDA, CPU_ISA, REASON
    try:
        from mopt_fast import _C  # noqa: F401  (registers the ops)
    except ImportError as exc:
        REASON = (
            f"compiled kernels not built ({exc}); build them with "
            "`pip install --no-build-isolation .`"
        )
        return
    CPU_ISA = _C.cpu_isa
    WITH_CUDA = bool(_C.with_cuda)
    needs = _ISA_NEEDS.get(CPU_ISA, set())
    have = torch.backends.cpu.get_cpu_capability()
    if needs and have not in needs:
        REASON = (
            f"compiled CPU kernels were built for {CPU_ISA} but this CPU offers {have}; rebuild "
            "with MOPT_FAST_CPU_ISA=default"
        )
        return
    COMPILED = True


_load()
if not COMPILED:
    warnings.warn(f"mopt_fast: {REASON}. Using the pure-torch backend.", stacklevel=2)
