"""`AdvancedProfiler`: a cProfile per action; the report gives, per action, its functions by
cumulative time (pstats), optionally also dumped as ``.prof`` files."""
from __future__ import annotations

import cProfile
import io
import os
import pstats
from collections import defaultdict
from pathlib import Path
from typing import Any

from mopt_fast.profilers.profiler import Profiler, local_dir

__all__ = ["AdvancedProfiler"]


class AdvancedProfiler(Profiler):
    """Python's cProfile for each action (only one runs at a time: starting one pauses the others).

    `line_count_restriction`: the functions listed per action, a count (int) or a fraction (float
    in [0, 1]); `dump_stats`: also write each action's raw stats to ``dirpath`` (``.prof``)."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None,
                 line_count_restriction: float = 1.0, dump_stats: bool = False) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.profiled_actions: dict[str, cProfile.Profile] = defaultdict(cProfile.Profile)
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats

    def start(self, action_name: str) -> None:
        for profile in self.profiled_actions.values():  # one cProfile can be enabled at a time
            profile.disable()
        self.profiled_actions[action_name].enable()

    def stop(self, action_name: str) -> None:
        profile = self.profiled_actions.get(action_name)
        if profile is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        profile.disable()

    def _dump_stats(self, action_name: str, profile: cProfile.Profile) -> None:
        assert self.dirpath, "AdvancedProfiler(dump_stats=True) needs a dirpath"
        os.makedirs(local_dir(self.dirpath), exist_ok=True)
        profile.dump_stats(os.path.join(self.dirpath, self._prepare_filename(action_name=action_name,
                                                                             extension=".prof")))

    def summary(self) -> str:
        stats = {}
        for action_name, profile in self.profiled_actions.items():
            if self.dump_stats:
                self._dump_stats(action_name, profile)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative").print_stats(
                self.line_count_restriction)
            stats[action_name] = text.getvalue()
        return self._stats_to_str(stats)

    def teardown(self, stage: str | None) -> None:
        super().teardown(stage=stage)
        self.profiled_actions.clear()

    def __reduce__(self) -> tuple[Any, ...]:
        # cProfile.Profile does not pickle: a pickled profiler comes back empty, with its settings
        return (self.__class__, (), {"dirpath": self.dirpath, "filename": self.filename,
                                     "line_count_restriction": self.line_count_restriction})
