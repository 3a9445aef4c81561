"""EarlyStopping: stop fitting when a monitored metric stops improving (Lightning 2.6's callback).

The check runs at the end of the training epoch when validation runs once at every epoch's end
(``val_check_interval=1.0``, ``check_val_every_n_epoch=1``), else after each validation run, or as
`check_on_train_epoch_end` says. A stop sets ``trainer.should_stop``: the Trainer finishes the
batch (and the validation due after it), runs the epoch's end hooks and stops, as Lightning does.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.callbacks.callback import Callback, reduce_boolean_decision, trainer_fn
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["EarlyStopping", "EarlyStoppingReason"]

log = logging.getLogger(__name__)


class EarlyStoppingReason(Enum):
    """Why EarlyStopping stopped the fit."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Monitor a metric and stop training when it stops improving.

    Args:
        monitor: the key of ``trainer.callback_metrics`` to watch.
        min_delta: an improvement must beat the best score by more than this (absolute).
        patience: checks without improvement before stopping (checks, not epochs).
        verbose: log each improvement and the stop (INFO, logger ``mopt_fast.trainer``).
        mode: "min" or "max".
        strict: a missing `monitor` is a RuntimeError (else skipped, with a warning when verbose).
        check_finite: stop when the metric is NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_on_train_epoch_end: check at the end of the training epoch (True) or after
            validation (False); None decides from the Trainer's validation schedule.
        log_rank_zero_only: with several processes, only rank 0 logs.

    Attributes:
        wait_count, best_score (a tensor), stopped_epoch (0 when it did not stop),
        stopping_reason (`EarlyStoppingReason`), stopping_reason_message.
    """

    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}
    _monitoring = True

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.min_delta = min_delta
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.wait_count = 0
        self.stopped_epoch = 0
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self._check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only
        if self.mode not in self.mode_dict:
            raise MisconfigurationException(f"`mode` can be {', '.join(self.mode_dict.keys())}, got {self.mode}")
        self.min_delta *= 1 if self.monitor_op == torch.gt else -1
        inf = torch.tensor(torch.inf)
        self.best_score = inf if self.monitor_op == torch.lt else -inf

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Callable:
        return self.mode_dict[self.mode]

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # Validation several times an epoch, or not every epoch: check after validation instead.
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    def _should_skip_check(self, trainer: CallbackTrainer) -> bool:
        return trainer_fn(trainer) != "fit" or trainer.sanity_checking

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def _validate_condition_metric(self, logs: dict[str, torch.Tensor]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        error_msg = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available."
            " Pass in or modify your `EarlyStopping` callback to use any of the following:"
            f" `{'`, `'.join(list(logs.keys()))}`"
        )
        if self.strict:
            raise RuntimeError(error_msg)
        if self.verbose > 0:
            warnings.warn(error_msg, RuntimeWarning, stacklevel=2)
        return False

    def _run_early_stopping_check(self, trainer: CallbackTrainer) -> None:
        """Checks the stopping criteria and, if one is met, tells the Trainer to stop."""
        logs = trainer.callback_metrics
        if getattr(trainer, "fast_dev_run", False) or not self._validate_condition_metric(logs):
            return
        current = logs[self.monitor].squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        should_stop = reduce_boolean_decision(trainer, should_stop, all=False)  # any rank stops them all
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop = False
        reason = None
        if self.check_finite and not torch.isfinite(current):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            reason = (
                f"Monitored metric {self.monitor} = {current} is not finite."
                f" Previous best value was {self.best_score:.3f}. Signaling Trainer to stop."
            )
        elif self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            reason = (
                "Stopping threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.stopping_threshold}."
                " Signaling Trainer to stop."
            )
        elif self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            should_stop = True
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            reason = (
                "Divergence threshold reached:"
                f" {self.monitor} = {current} {self.order_dict[self.mode]} {self.divergence_threshold}."
                " Signaling Trainer to stop."
            )
        elif self.monitor_op(current - self.min_delta, self.best_score.to(current.device)):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                should_stop = True
                self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
                reason = (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records."
                    f" Best score: {self.best_score:.3f}. Signaling Trainer to stop."
                )
        return should_stop, reason

    def _improvement_message(self, current: torch.Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(self.best_score - current):.3f} >="
                f" min_delta = {abs(self.min_delta)}. New best score: {current:.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current:.3f}"

    @staticmethod
    def _log_info(trainer: CallbackTrainer, message: str, log_rank_zero_only: bool) -> None:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is not None:
            message = f"[rank: {rank}] {message}"
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(message)
