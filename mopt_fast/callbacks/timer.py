"""The Timer callback (Lightning 2.6's ``lightning.pytorch.callbacks.Timer``), which also implements
``Trainer(max_time=...)``: it tracks the time spent training, validating and testing, and stops the
fit (``trainer.should_stop``) once the training time reaches `duration`, checked after every batch
(``interval="step"``) or every epoch."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

import torch

from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.core.states import RunningStage
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["Timer", "parse_duration"]


@overload
def parse_duration(duration: str | timedelta | dict[str, int], what: str = ...) -> timedelta: ...
@overload
def parse_duration(duration: None, what: str = ...) -> None: ...
def parse_duration(duration: str | timedelta | dict[str, int] | None, what: str = "Timer(duration") -> timedelta | None:
    """"DD:HH:MM:SS", a timedelta or timedelta's keyword arguments, as a timedelta."""
    if isinstance(duration, str):
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", duration.strip())
        if not match:
            raise MisconfigurationException(
                f"`{what}={duration!r})` is not a valid duration. Expected a string in the format DD:HH:MM:SS."
            )
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if isinstance(duration, dict):
        return timedelta(**duration)
    return duration


class Timer(Callback):
    """Stops training after `duration` (``"DD:HH:MM:SS"``, a timedelta or a dict of its arguments);
    `interval` "step" or "epoch" says when it checks; `time_elapsed(stage)` and
    `time_remaining(stage)` report the time per stage ("train", "validate", "test")."""

    def __init__(self, duration: str | timedelta | dict[str, int] | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        duration = parse_duration(duration)
        if interval not in ("step", "epoch"):
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval})`. Possible choices are: epoch, step"
            )
        self._duration = duration.total_seconds() if duration is not None else None
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._end_time: dict[RunningStage, float | None] = dict.fromkeys(RunningStage)
        self._offset = 0.0

    def start_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        return self._start_time[RunningStage(stage)]

    def end_time(self, stage: str = RunningStage.TRAINING) -> float | None:
        return self._end_time[RunningStage(stage)]

    def time_elapsed(self, stage: str = RunningStage.TRAINING) -> float:
        stage = RunningStage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == RunningStage.TRAINING else 0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = RunningStage.TRAINING) -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    def on_train_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._start_time[RunningStage.TRAINING] = time.monotonic()

    def on_train_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._end_time[RunningStage.TRAINING] = time.monotonic()

    def on_validation_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._start_time[RunningStage.VALIDATING] = time.monotonic()

    def on_validation_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._end_time[RunningStage.VALIDATING] = time.monotonic()

    def on_test_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._start_time[RunningStage.TESTING] = time.monotonic()

    def on_test_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._end_time[RunningStage.TESTING] = time.monotonic()

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, *args: Any,
                           **kwargs: Any) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in RunningStage}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = state_dict.get("time_elapsed", {}).get(RunningStage.TRAINING.value, 0)

    def _check_time_remaining(self, trainer: CallbackTrainer) -> None:
        assert self._duration is not None  # the hooks check only with a duration
        should_stop = self.time_elapsed() >= self._duration
        if trainer.world_size > 1:  # rank 0's clock decides for all, as Lightning's broadcast
            flag = torch.tensor(float(should_stop and trainer.is_global_zero), device=trainer.root_device)
            should_stop = bool(trainer.strategy.reduce(flag, reduce_op="max").item())
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose and trainer.is_global_zero:
            elapsed = timedelta(seconds=int(self.time_elapsed(RunningStage.TRAINING)))
            rank_zero_info(trainer, f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")
