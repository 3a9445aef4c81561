"""The batch-size search (Lightning's `BatchSizeFinder` callback and `Tuner.scale_batch_size`).

`scale_batch_size` saves the run to a temporary checkpoint, then tries batch sizes: each trial
sets the module's (or its hparams', or the data module's) `batch_arg_name`, asks for the loaders
again and runs `steps_per_trial` batches: training steps inside a fit (on_fit_start), or
validation / test steps inside validate / test (at their start hook, with one loader only; the run
then goes on at the size found, as Lightning's). Inside predict, as Lightning's, each trial
predicts the whole loader (Lightning's search limits the fit and evaluation loops only). "power" doubles the size until a trial runs
out of memory (then halves it) or the size reaches the dataset's length, `max_trials` or
`max_val`; "binsearch" then bisects between the last size that fit and the first that did not,
and takes `margin` off the result. The run is put back as it was, except that the attribute keeps
the size found. On the CPU nothing runs out of memory: the search ends at the dataset's length or
`max_trials`, as Lightning's. Same trials, same result as Lightning's.

As Lightning's, the search outside a fit leaves the module in eval mode (the trials' evaluation
runs captured the modes anew), and searches even with loaders given to validate / test / predict
(those never change: the attribute alone grows).
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks._tuning import (
    free_memory,
    is_oom_error,
    lightning_getattr,
    lightning_hasattr,
    lightning_setattr,
    remove_checkpoint,
    temporary_checkpoint,
)
from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.exceptions import MisconfigurationException, _TunerExitException

if TYPE_CHECKING:
    from mopt_fast.core.protocol import TuningTrainer

__all__ = ["BatchSizeFinder", "scale_batch_size"]

log = logging.getLogger("mopt_fast.tuner")

_MODES = ("power", "binsearch")


def _check_margin(margin: float) -> None:
    assert 0.0 <= margin < 1.0, f"`margin` should be between 0 and 1. Found {margin=}"


def _adjust_batch_size(trainer: TuningTrainer, name: str, factor: float = 1.0, value: int | None = None,
                       desc: str | None = None, max_val: int = 8192) -> tuple[int, bool]:
    """Set the batch size to `value` (else the current one times `factor`), at most `max_val`; left
    as it is once it reaches the length of the running loop's data set(s). Returns (the size, whether it changed)."""
    model = trainer.lightning_module
    batch_size = lightning_getattr(model, name)
    assert batch_size is not None
    length = trainer.tuning_dataset_length()
    if length is not None and batch_size >= length:
        rank_zero_info(trainer, f"The batch size {batch_size} is greater or equal than the length of your dataset: "
                                f"{length}.")
        return batch_size, False
    new_size = value if value is not None else int(batch_size * factor)
    if new_size > max_val:
        if desc:
            rank_zero_info(trainer, f"Batch size {new_size} exceeds max_val limit {max_val}, capping at {max_val}")
        new_size = max_val
    if desc:
        rank_zero_info(trainer, f"Batch size {batch_size} {desc}, trying batch size {new_size}")
    lightning_setattr(model, name, new_size)
    return new_size, new_size != batch_size


def _run_power_scaling(trainer: TuningTrainer, new_size: int, name: str, max_trials: int, max_val: int) -> int:
    """Double the size after each trial that fits; halve it after one that runs out of memory, and
    stop there once any trial fit."""
    any_success = False
    for trial in range(max_trials):
        free_memory()
        if new_size >= max_val:
            rank_zero_info(trainer, f"Reached the maximum batch size limit of {max_val}. Stopping search.")
            break
        try:
            trainer.run_tuning_trial()
            if trial + 1 >= max_trials:  # the size that just fit is the answer
                break
            # Lightning's power search caps the doubling at the default max_val (8192), not the one given
            new_size, changed = _adjust_batch_size(trainer, name, factor=2.0, desc="succeeded")
            if not changed:
                break
            trainer.reload_dataloaders()
            any_success = True
        except RuntimeError as exc:
            if not is_oom_error(exc):
                raise
            free_memory()
            new_size, _ = _adjust_batch_size(trainer, name, factor=0.5, desc="failed")
            trainer.reload_dataloaders()
            if any_success:
                break
    return new_size


def _run_binsearch_scaling(trainer: TuningTrainer, new_size: int, name: str, max_trials: int, margin: float,
                           max_val: int) -> int:
    """Double the size until a trial runs out of memory, then bisect between the last size that fit
    and the first that did not; `margin` taken off the result."""
    low, high, count = 1, None, 0
    while True:
        free_memory()
        if new_size >= max_val:
            rank_zero_info(trainer, f"Reached the maximum batch size limit of {max_val}. Stopping search.")
            break
        try:
            trainer.run_tuning_trial()
            count += 1
            if count >= max_trials:  # the size that just fit is the answer
                break
            low = new_size
            if high:
                if high - low <= 1:
                    break
                new_size, changed = _adjust_batch_size(trainer, name, value=(high + low) // 2, desc="succeeded",
                                                       max_val=max_val)
            else:
                new_size, changed = _adjust_batch_size(trainer, name, factor=2.0, desc="succeeded", max_val=max_val)
            if not changed:
                break
            trainer.reload_dataloaders()
        except RuntimeError as exc:
            if not is_oom_error(exc):
                raise
            free_memory()
            high = new_size
            new_size, _ = _adjust_batch_size(trainer, name, value=(high + low) // 2, desc="failed")
            trainer.reload_dataloaders()
            if high - low <= 1:
                break
    if margin > 0:
        reduced = max(1, int(new_size * (1 - margin)))
        if reduced != new_size:
            rank_zero_info(trainer, f"Applying margin of {margin:.1%}, reducing batch size from {new_size} to {reduced}")
            new_size = reduced
            lightning_setattr(trainer.lightning_module, name, new_size)
    return new_size


def _trial_settings(trainer: TuningTrainer, steps_per_trial: int) -> dict[str, Any]:
    """The Trainer settings of a trial: `steps_per_trial` training steps (the validation limited
    alike) inside a fit, `steps_per_trial` batches of validate / test. A predict trial runs all of
    its loader: Lightning's search sets limits for the fit and evaluation loops only."""
    prefix = trainer.tuning_stage_prefix
    if prefix == "train":
        return {"max_steps": steps_per_trial, "limit_train_batches": 1.0, "limit_val_batches": steps_per_trial}
    if prefix == "predict":
        return {}
    return {f"limit_{prefix}_batches": steps_per_trial}


def scale_batch_size(trainer: TuningTrainer, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                     max_trials: int = 25, batch_arg_name: str = "batch_size", margin: float = 0.05,
                     max_val: int = 8192) -> int | None:
    """Search the batch size inside the fit, validate, test or predict `trainer` is running (see
    the module docstring); the size found, or None under fast_dev_run (with Lightning's warning)."""
    _check_margin(margin)
    if trainer.fast_dev_run:
        warnings.warn("Skipping batch size scaler since `fast_dev_run` is enabled.", UserWarning, stacklevel=2)
        return None
    path = temporary_checkpoint(trainer, "scale_batch_size")
    progress_bar = trainer.progress_bar_callback
    try:
        with trainer.tuning_trials([], **_trial_settings(trainer, steps_per_trial)):
            if progress_bar:
                progress_bar.disable()
            try:
                new_size, _ = _adjust_batch_size(trainer, batch_arg_name, value=init_val)
                if mode == "power":
                    new_size = _run_power_scaling(trainer, new_size, batch_arg_name, max_trials, max_val)
                elif mode == "binsearch":
                    new_size = _run_binsearch_scaling(trainer, new_size, batch_arg_name, max_trials, margin, max_val)
                free_memory()
                log.info(f"Finished batch size finder, will continue with full run using batch size {new_size}")
            finally:
                if progress_bar:
                    progress_bar.enable()
    finally:
        trainer.restore_tuning_checkpoint(path)
        remove_checkpoint(trainer, path)
    return new_size


class BatchSizeFinder(Callback):
    """Searches the largest batch size that fits at the start of the fit, or of validate / test /
    predict (Lightning's callback of the same name; not at a fit's validation); `optimal_batch_size`
    holds it, and the module's (or hparams', or data module's) `batch_arg_name` is set to it for the
    run. The train data must come from the module or a data module (the loader is asked for again at
    each size); validate / test / predict must have one loader.

    Args:
        mode: "power" (double until out of memory) or "binsearch" (then bisect).
        steps_per_trial: training steps run at each size.
        init_val: the first size tried.
        max_trials: at most this many sizes tried.
        batch_arg_name: the attribute that holds the batch size.
        margin: "binsearch" only: the fraction taken off the size found (a safety buffer).
        max_val: the largest size tried.
    """

    SUPPORTED_MODES = _MODES

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}")
        _check_margin(margin)
        self.optimal_batch_size: int | None = init_val
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val
        self._early_exit = False  # set by the Tuner: end the run once the search is done

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if getattr(trainer.strategy, "is_distributed", False):
            raise MisconfigurationException("The Batch size finder is not supported with distributed strategies.")
        if not trainer.uses_module_data():
            raise MisconfigurationException(
                "The Batch size finder cannot be used with dataloaders passed directly to `.fit()`. Please disable"
                " the feature or incorporate the dataloader into your LightningModule or LightningDataModule."
            )
        if stage != "fit" and trainer.tuning_loader_count() > 1:
            raise MisconfigurationException(
                f"The Batch size finder cannot be used with multiple {trainer.tuning_stage_prefix} dataloaders."
            )
        name = self._batch_arg_name
        if not lightning_hasattr(pl_module, name):
            raise MisconfigurationException(
                f"Field {name} not found in `model`, `datamodule`, nor their `hparams` attributes."
            )
        if hasattr(pl_module, name) and hasattr(pl_module, "hparams") and name in pl_module.hparams:
            warnings.warn(
                f"Field `model.{name}` and `model.hparams.{name}` are mutually exclusive! `model.{name}` will be used as "
                "the initial batch size for scaling. If this is not the intended behavior, please remove either one.",
                UserWarning, stacklevel=2,
            )

    def scale_batch_size(self, trainer: TuningTrainer, pl_module: Any) -> None:
        self.optimal_batch_size = scale_batch_size(
            trainer, self._mode, self._steps_per_trial, self._init_val, self._max_trials, self._batch_arg_name,
            self._margin, self._max_val,
        )
        if self._early_exit:
            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "validate":
            return
        self.scale_batch_size(trainer, pl_module)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module)
