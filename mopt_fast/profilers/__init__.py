"""``mopt_fast.profilers``: the profilers, under the import path of ``lightning.pytorch.profilers``.

`Profiler` (the base class of a profiler of your own: `start` / `stop` an action),
`PassThroughProfiler` (records nothing), `SimpleProfiler` (wall time per action),
`AdvancedProfiler` (cProfile per action) and `PyTorchProfiler` (``torch.profiler``).
``Trainer(profiler="simple" | "advanced" | "pytorch" | a Profiler)`` wraps every hook, step and
batch fetch in an action named as Lightning names it. `XLAProfiler` raises
`mopt_fast.exceptions.NotBuiltError` (an ImportError and a NotImplementedError).
"""
from __future__ import annotations

from typing import Any

from mopt_fast.exceptions import not_built
from mopt_fast.profilers.advanced import AdvancedProfiler
from mopt_fast.profilers.base import PassThroughProfiler
from mopt_fast.profilers.profiler import Profiler
from mopt_fast.profilers.pytorch import PyTorchProfiler
from mopt_fast.profilers.simple import SimpleProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]


def __getattr__(name: str) -> Any:
    if name == "XLAProfiler":
        raise not_built("lightning.pytorch.profilers.XLAProfiler", "mopt_fast runs on CPU and CUDA; use "
                        "SimpleProfiler, AdvancedProfiler or PyTorchProfiler")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
