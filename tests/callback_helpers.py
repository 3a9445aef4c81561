"""What the side-by-side callback tests share: a logger that keeps what it is given, and the
plain-data view the runs are compared in."""
from __future__ import annotations

import math
import os
from typing import Any

import torch


def recorder_class(base: type) -> type:
    """A logger class on `base` (Lightning's `Logger` or mopt_fast's) that keeps each
    ``log_metrics`` call as ``(step, {name: float})`` in ``records``."""

    class Recorder(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.records: list[tuple[int | None, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "recorder"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    return Recorder


def plain(value: Any) -> Any:
    """Comparable data: tensors as lists, NaN as a string, containers recursively."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def files_under(root: str) -> list[str]:
    """The files below `root`, as paths relative to it, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
