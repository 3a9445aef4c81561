"""The progress bar base class (Lightning's ``ProgressBar``): totals, descriptions, `get_metrics`,
and the on/off switch the tqdm and rich bars share."""
from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.callback import Callback

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["ProgressBar", "SwitchableBar", "get_standard_metrics"]


# -- progress bars ------------------------------------------------------------------------------
def _logger_version(loggers: list[Any]) -> Any:
    if len(loggers) == 1:
        return loggers[0].version
    return "_".join(dict.fromkeys(str(lg.version) for lg in loggers))


def get_standard_metrics(trainer: CallbackTrainer) -> dict[str, int | str]:
    """``{"v_num": version}`` with a logger (the last 4 characters of a string version), as Lightning."""
    items: dict[str, int | str] = {}
    if trainer.loggers:
        version = _logger_version(trainer.loggers)
        if version not in ("", None):
            if isinstance(version, str):
                version = version[-4:]
            items["v_num"] = version
    return items


class ProgressBar(Callback):
    """The base class of progress bars (Lightning's API): totals, descriptions, `get_metrics`,
    `enable` / `disable`. The Trainer takes any ProgressBar in its callbacks as its bar.

    `refresh_interval` (mopt_fast's, keyword only in the subclasses): the metrics shown are read
    back from the device (`get_metrics`, a host-device sync) at most every this many seconds while
    an epoch runs, and always at the end of a training epoch and of a validation run. 0 reads
    them at every bar update, as Lightning does.
    """

    def __init__(self, refresh_interval: float = 0.5) -> None:
        self._trainer: CallbackTrainer | None = None
        self._current_eval_dataloader_idx: int | None = None
        self.refresh_interval = refresh_interval
        self._last_metrics_time = -math.inf

    @property
    def trainer(self) -> CallbackTrainer:
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    @property
    def total_train_batches(self) -> int | float:
        """Training batches this epoch (``inf`` for a loader without a length); with max_steps and
        max_epochs=-1, no more than the steps left."""
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            return min(trainer.num_training_batches, trainer.max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        trainer = self.trainer
        batches = _num_sanity_val_batches(trainer) if trainer.sanity_checking else trainer.num_val_batches
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0]
        return batches

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        batches = _trainer_attr(self.trainer, "num_test_batches", "test")
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0]
        return batches

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        batches = _trainer_attr(self.trainer, "num_predict_batches", "predict")
        if isinstance(batches, list):
            return batches[self._current_eval_dataloader_idx or 0]
        return batches

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches of this epoch's validation run (0 when this epoch does not validate)."""
        trainer = self.trainer
        n = trainer.check_val_every_n_epoch
        if not getattr(trainer, "enable_validation", False) or (
            n is not None and (trainer.current_epoch + 1) % n != 0
        ):
            return 0
        batches = trainer.num_val_batches
        return sum(batches) if isinstance(batches, list) else batches

    @property
    def total_test_batches(self) -> int | float:
        batches = _trainer_attr(self.trainer, "num_test_batches", "test")
        return sum(batches) if isinstance(batches, list) else batches

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def disable(self) -> None:
        """You should provide a way to disable the progress bar."""
        raise NotImplementedError

    def enable(self) -> None:
        """You should provide a way to enable the progress bar."""
        raise NotImplementedError

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs)

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    def get_metrics(self, trainer: CallbackTrainer,
                    pl_module: LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        """What the bar shows: ``v_num`` (with a logger) and the ``prog_bar=True`` metrics. Override
        it to change what is displayed."""
        standard = get_standard_metrics(trainer)
        pbar = trainer.progress_bar_metrics
        duplicates = list(standard.keys() & pbar.keys())
        if duplicates:
            warnings.warn(
                f"The progress bar already tracks a metric with the name(s) '{', '.join(duplicates)}' and"
                f" `self.log('{duplicates[0]}', ..., prog_bar=True)` will overwrite this value. "
                " If this is undesired, change the name or override `get_metrics()` in the progress bar callback.",
                stacklevel=2,
            )
        return {**standard, **pbar}

    def _metrics_due(self, force: bool = False) -> bool:
        """Whether to read the metrics now (at most every `refresh_interval` seconds, or `force`)."""
        now = time.monotonic()
        if force or now - self._last_metrics_time >= self.refresh_interval:
            self._last_metrics_time = now
            return True
        return False


def _trainer_attr(trainer: CallbackTrainer, name: str, loop: str) -> Any:
    if not hasattr(trainer, name):
        raise NotImplementedError(f"{type(trainer).__name__} has no {loop} loop yet (no `trainer.{name}`)")
    return getattr(trainer, name)


def _num_sanity_val_batches(trainer: CallbackTrainer) -> int | float:
    if hasattr(trainer, "num_sanity_val_batches"):
        batches = trainer.num_sanity_val_batches
        return sum(batches) if isinstance(batches, list) else batches
    steps = trainer.num_sanity_val_steps
    val_batches = trainer.num_val_batches
    total = sum(val_batches) if isinstance(val_batches, list) else val_batches
    return total if steps == -1 else min(steps, total)


class SwitchableBar:
    """The on/off switch of the built-in bars (tqdm and rich): enabled unless `disable` was called
    or the refresh rate is 0."""

    _enabled = True
    refresh_rate: Any

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

