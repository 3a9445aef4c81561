"""`PassThroughProfiler`: records nothing (``trainer.profiler`` when none is set)."""
from __future__ import annotations

from mopt_fast.profilers.profiler import Profiler

__all__ = ["PassThroughProfiler"]


class PassThroughProfiler(Profiler):
    """A profiler that records nothing. A Trainer given none (or this one) calls its hooks without
    any profiling on the way, so it costs nothing per step."""

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass
