"""What the Trainer is doing, as Lightning 2.6 names it: `TrainerFn` (the entry point running:
fit, validate, test, predict), `RunningStage` (the loop running inside it), `TrainerStatus`, and
`TrainerState` holding the three (``trainer.state``). `LoopPoint` is mopt_fast's own: where in
the fit loop a checkpoint taken now sits, which is what an exact resume starts from.

The enums are strings that compare equal to their value, case-insensitively, as Lightning's
(``trainer.state.fn == "fit"``), and hash as their lower-cased value, so they work as dict keys
next to plain strings. Checkpoints store ``.value`` (plain data for a weights_only load).
"""
from __future__ import annotations

import dataclasses
from enum import Enum

__all__ = ["LoopPoint", "RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]


class _StrEnum(str, Enum):
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Enum):
            other = other.value
        return isinstance(other, str) and self.value.lower() == other.lower()

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.value.lower())

    def __str__(self) -> str:  # as Lightning's: "TrainerFn.FITTING"
        return f"{type(self).__name__}.{self.name}"


class TrainerStatus(_StrEnum):
    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)


class TrainerFn(_StrEnum):
    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(_StrEnum):
    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        """"val", "test", "predict" or "train": the stem of the `*_dataloader` hook and the `limit_*_batches` flag."""
        if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            return "val"
        return self.value


@dataclasses.dataclass
class TrainerState:
    status: TrainerStatus = TrainerStatus.INITIALIZING
    fn: TrainerFn | None = None
    stage: RunningStage | None = None

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return self.status.stopped


class LoopPoint(_StrEnum):
    """Where a checkpoint taken now sits in the fit loop. The exact resume points are BATCH (the
    end of a batch), VALIDATION (after a validation run inside a batch) and EPOCH (the end of an
    epoch, after on_train_epoch_end); a checkpoint saved elsewhere records the approximate stage
    around it (IN_BATCH, IN_EPOCH_END) and resumes after that batch or epoch, with a warning."""

    START = "start"  # before the first batch
    IN_BATCH = "in_batch"
    BATCH = "batch"
    VALIDATION = "validation"
    IN_EPOCH_END = "in_epoch_end"
    EPOCH = "epoch"
    BETWEEN_EPOCHS = "between_epochs"
    END = "end"  # after the last epoch

    @property
    def inside_epoch(self) -> bool:
        """A resume from here finishes the batch it was taken in, then the rest of the epoch."""
        return self in (LoopPoint.BATCH, LoopPoint.IN_BATCH, LoopPoint.VALIDATION)

    @property
    def at_epoch_end(self) -> bool:
        return self in (LoopPoint.EPOCH, LoopPoint.IN_EPOCH_END)
