"""`SimpleProfiler`: the wall time of every action; the report gives each action's mean, number
of calls, total and share of the run (Lightning's table, the same columns and order)."""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

from mopt_fast.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Records how long each action takes (`recorded_durations`: action -> its durations in seconds).

    `extended`: the table also has the number of calls and the share of the total time.
    Starting an action already running, or stopping one not started, is a ValueError."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: dict[str, list[float]] = defaultdict(list)
        self.extended = extended
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        if action_name not in self.current_actions:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.recorded_durations[action_name].append(end - self.current_actions.pop(action_name))

    def summary(self) -> str:
        sep = os.linesep
        out = (f"{self._stage.upper()} " if self._stage is not None else "") + f"Profiler Report{sep}"
        if self.extended:
            if self.recorded_durations:
                out += self._extended_table(sep)
        else:
            out += self._table(sep)
        return out + sep

    def _extended_table(self, sep: str) -> str:
        width = max(len(k) for k in self.recorded_durations)

        def row(action: str, mean: str, calls: str, total: str, share: str) -> str:
            return (f"{sep}|  {action:<{width}s}\t|  {mean:<15}\t|"
                    f"  {calls:<15}\t|  {total:<15}\t|  {share:<15}\t|")

        header = row("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
        rule = f"{sep}{'-' * len(header.expandtabs())}"
        elapsed = time.perf_counter() - self.start_time
        rows = []
        for action, durations in self.recorded_durations.items():
            total = math.fsum(durations)
            rows.append((action, total / len(durations), len(durations), total, 100.0 * total / elapsed))
        rows.sort(key=lambda r: r[4], reverse=True)
        out = rule + header + rule
        out += row("Total", "-", f"{sum(r[2] for r in rows)}", f"{elapsed:.5}", "100 %") + rule
        for action, mean, calls, total, share in rows:
            out += row(action, f"{mean:.5}", f"{calls}", f"{total:.5}", f"{share:.5}")
        return out + rule

    def _table(self, sep: str) -> str:
        width = max(len(k) for k in self.recorded_durations)  # an empty profile fails here, as Lightning's

        def row(action: str, mean: str, total: str) -> str:
            return f"{sep}|  {action:<{width}s}\t|  {mean:<15}\t|  {total:<15}\t|"

        header = row("Action", "Mean duration (s)", "Total time (s)")
        rule = f"{sep}{'-' * len(header.expandtabs())}"
        rows = [(a, math.fsum(d) / len(d), math.fsum(d)) for a, d in self.recorded_durations.items()]
        rows.sort(key=lambda r: r[1], reverse=True)
        out = rule + header + rule
        for action, mean, total in rows:
            out += row(action, f"{mean:.5}", f"{total:.5}")
        return out + rule
