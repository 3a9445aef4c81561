"""Callbacks: the base class, the progress bars (tqdm here, rich in rich_progress.py) and the
model summary, plus the checkpoint plumbing every callback shares (state_key, state_dict).

A callback's hooks take ``(trainer, pl_module, ...)`` and run before the module's hook of the same
name (except on_train_epoch_end, where EarlyStopping and the checkpoint callbacks run after the
module's, as in Lightning). The Trainer only calls the hooks a callback overrides.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from mopt_fast.hooks import EvaluationCallbackHooks

__all__ = ["Callback", "ProgressBar", "TQDMProgressBar", "Tqdm", "ModelSummary", "HOOKS"]

HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start",
    "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end", "on_exception",
)

# Lightning's console logger set-up: INFO messages (EarlyStopping(verbose=True), ModelCheckpoint(verbose=True))
# go to stderr unless the application configured logging itself.
log = logging.getLogger("mopt_fast.trainer")
log.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    log.addHandler(logging.StreamHandler())
    log.propagate = False


def rank_zero_info(trainer: Any, message: str) -> None:
    if trainer is None or trainer.is_global_zero:
        log.info(message)


class Callback(EvaluationCallbackHooks):
    """Override any of the hooks in `HOOKS`; each gets ``(trainer, pl_module, *hook_args)``.

    A callback with state returns it from `state_dict` (plain data: tensors, numbers, strings,
    lists, dicts) and takes it back in `load_state_dict`; checkpoints store it under `state_key`.
    """

    # EarlyStopping and checkpoint callbacks: their on_train_epoch_end runs after the module's.
    _monitoring = False

    @property
    def state_key(self) -> str:
        """Where this callback's state lives in ``checkpoint["callbacks"]`` (unique per Trainer for
        callbacks with state)."""
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Called when a checkpoint is saved, after the callbacks' states are in it."""

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Called when fit resumes from a checkpoint, before the callbacks' states are loaded."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None: ...
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None: ...
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None: ...
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None: ...
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None: ...
    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None: ...
    # The test and predict hooks come from EvaluationCallbackHooks (mopt_fast/hooks.py).
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None: ...


# -- what the Trainer calls for every callback ------------------------------------------------------
def validate_callbacks_list(callbacks: Iterable[Callback]) -> None:
    """Lightning's check at Trainer(...): two callbacks with state may not share a state_key."""
    seen: set[str] = set()
    for cb in callbacks:
        if type(cb).state_dict is Callback.state_dict:
            continue
        if cb.state_key in seen:
            raise RuntimeError(
                f"Found more than one stateful callback of type `{type(cb).__name__}`. In the current"
                " configuration, this callback does not support being saved alongside other instances of the same type."
                f" Please consult the documentation of `{type(cb).__name__}` regarding valid settings for"
                " the callback state to be checkpointable."
                " HINT: The `callback.state_key` must be unique among all callbacks in the Trainer."
            )
        seen.add(cb.state_key)


def save_callback_states(trainer: Any, checkpoint: dict[str, Any]) -> None:
    """``checkpoint["callbacks"]``: each callback's non-empty state_dict under its state_key; then
    every callback's on_save_checkpoint (Lightning's order)."""
    states = {}
    for cb in trainer.callbacks:
        state = cb.state_dict()
        if state:
            states[cb.state_key] = state
    checkpoint["callbacks"] = states
    for cb in trainer.callbacks:
        if type(cb).on_save_checkpoint is not Callback.on_save_checkpoint:
            cb.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)


def load_callback_states(trainer: Any, checkpoint: dict[str, Any]) -> None:
    """Every callback's on_load_checkpoint, then load_state_dict with its saved state (a copy), as
    Lightning restores callbacks. Checkpoints from before state keys (``ModelCheckpoint[i]``) load too."""
    states = checkpoint.get("callbacks")
    if states is None:
        return
    legacy: dict[int, str] = {}
    n_checkpoints = 0
    for cb in trainer.callbacks:
        if getattr(cb, "_is_model_checkpoint", False):
            legacy[id(cb)] = f"ModelCheckpoint[{n_checkpoints}]"
            n_checkpoints += 1
    current = {legacy[id(cb)] if legacy.get(id(cb)) in states else cb.state_key for cb in trainer.callbacks}
    missing = states.keys() - current
    if missing:
        warnings.warn(
            "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during"
            f" `Trainer` instantiation. Please add the following callbacks: {list(missing)}.",
            stacklevel=4,
        )
    for cb in trainer.callbacks:
        if type(cb).on_load_checkpoint is not Callback.on_load_checkpoint:
            cb.on_load_checkpoint(trainer, trainer.lightning_module, checkpoint)
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(legacy.get(id(cb), "")))
        if state:
            cb.load_state_dict(copy.deepcopy(state))


def reduce_boolean_decision(trainer: Any, decision: bool, all: bool = True) -> bool:  # noqa: A002
    """Every rank's `decision` combined (all of them, or any): the same answer on every rank."""
    if trainer.world_size <= 1:
        return bool(decision)
    t = trainer.strategy.reduce(torch.tensor(float(bool(decision)), device=trainer.root_device), "sum")
    return bool(t.item() == trainer.world_size) if all else bool(t.item() > 0)


def trainer_fn(trainer: Any) -> str:
    """What the trainer is running: "fit", "validate", "test" or "predict" (Lightning's
    ``trainer.state.fn``); "fit" for a Trainer without a state."""
    state = getattr(trainer, "state", None)
    fn = getattr(state, "fn", None)
    if fn is None:
        return "fit"
    return str(getattr(fn, "value", fn))


# -- progress bars ------------------------------------------------------------------------------
def _logger_version(loggers: list[Any]) -> Any:
    if len(loggers) == 1:
        return loggers[0].version
    return "_".join(dict.fromkeys(str(lg.version) for lg in loggers))


def get_standard_metrics(trainer: Any) -> dict[str, int | str]:
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
        self._trainer: Any = None
        self._current_eval_dataloader_idx: int | None = None
        self.refresh_interval = refresh_interval
        self._last_metrics_time = -math.inf

    @property
    def trainer(self) -> Any:
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

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, int | str | float | dict[str, float]]:
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


def _trainer_attr(trainer: Any, name: str, loop: str) -> Any:
    if not hasattr(trainer, name):
        raise NotImplementedError(f"{type(trainer).__name__} has no {loop} loop yet (no `trainer.{name}`)")
    return getattr(trainer, name)


def _num_sanity_val_batches(trainer: Any) -> int | float:
    if hasattr(trainer, "num_sanity_val_batches"):
        batches = trainer.num_sanity_val_batches
        return sum(batches) if isinstance(batches, list) else batches
    steps = trainer.num_sanity_val_steps
    return trainer.num_val_batches if steps == -1 else min(steps, trainer.num_val_batches)


def _load_tqdm() -> type:
    # As Lightning: tqdm.auto (notebook widgets) only when ipywidgets is installed.
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


_tqdm = _load_tqdm()
_PAD_SIZE = 5


class Tqdm(_tqdm):  # type: ignore[misc, valid-type]
    """tqdm whose float and string numbers are padded with zeros, so the bar does not flicker."""

    @staticmethod
    def format_num(n: int | float | str) -> str:
        padded = isinstance(n, (float, str))
        if not isinstance(n, str):
            n = _tqdm.format_num(n)
        if padded and "e" not in n:
            if "." not in n and len(n) < _PAD_SIZE:
                try:
                    float(n)
                except ValueError:
                    return n
                n += "."
            n += "0" * (_PAD_SIZE - len(n))
        return n


def convert_inf(x: int | float | None) -> int | float | None:
    """tqdm takes no inf or NaN total: None instead."""
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return x


def _update_n(bar: Any, value: int) -> None:
    """Sets the bar's count; redraws it at most every `mininterval` seconds (tqdm's 0.1 s) and at
    its end: a redraw formats and writes the whole line, too costly for every fast step."""
    if not bar.disable:
        bar.n = value
        now = time.monotonic()
        if value == bar.total or now - getattr(bar, "_mopt_fast_drawn", -math.inf) >= bar.mininterval:
            bar._mopt_fast_drawn = now
            bar.refresh()


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


def _tqdm_bar(name: str) -> property:
    """TQDMProgressBar's ``<name>_progress_bar``: the tqdm bar, a TypeError before it is made."""
    attr = f"_{name}_progress_bar"

    def get(self: TQDMProgressBar) -> Any:
        bar = getattr(self, attr)
        if bar is None:
            raise TypeError(f"The `{self.__class__.__name__}.{attr}` reference has not been set yet.")
        return bar

    def set_(self: TQDMProgressBar, bar: Any) -> None:
        setattr(self, attr, bar)

    return property(get, set_)


class TQDMProgressBar(SwitchableBar, ProgressBar):
    """Lightning's default tqdm progress bars: the sanity check, the training epoch (with the
    ``prog_bar=True`` metrics), the validation run, test and predict, written to stdout.

    Args:
        refresh_rate: update the bars every this many batches (0 disables them).
        process_position: offset the bars by this many lines (other bars above them).
        leave: keep each epoch's finished bar in the terminal.
        refresh_interval: mopt_fast's, see `ProgressBar` (0: Lightning's every-update metrics read).

    Override `init_train_tqdm`, `init_validation_tqdm`, `init_sanity_tqdm`, `init_test_tqdm`,
    `init_predict_tqdm` to change a bar, `get_metrics` to change what it shows.
    """

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False, *,
                 refresh_interval: float = 0.5) -> None:
        super().__init__(refresh_interval)
        self._refresh_rate = self._resolve_refresh_rate(refresh_rate)
        self._process_position = process_position
        self._enabled = True
        self._train_progress_bar: Any = None
        self._val_progress_bar: Any = None
        self._test_progress_bar: Any = None
        self._predict_progress_bar: Any = None
        self._leave = leave

    def __getstate__(self) -> dict:
        return {k: v if not isinstance(v, _tqdm) else None for k, v in vars(self).items()}

    train_progress_bar = _tqdm_bar("train")
    val_progress_bar = _tqdm_bar("val")
    test_progress_bar = _tqdm_bar("test")
    predict_progress_bar = _tqdm_bar("predict")

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    def init_sanity_tqdm(self) -> Tqdm:
        """Override this to customize the tqdm bar for the validation sanity run."""
        return Tqdm(desc=self.sanity_check_description, position=(2 * self.process_position),
                    disable=self.is_disabled, leave=False, dynamic_ncols=True, file=sys.stdout,
                    bar_format=self.BAR_FORMAT)

    def init_train_tqdm(self) -> Tqdm:
        """Override this to customize the tqdm bar for training."""
        return Tqdm(desc=self.train_description, position=(2 * self.process_position),
                    disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                    bar_format=self.BAR_FORMAT)

    def init_predict_tqdm(self) -> Tqdm:
        """Override this to customize the tqdm bar for predicting."""
        return Tqdm(desc=self.predict_description, position=(2 * self.process_position),
                    disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
                    bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        """Override this to customize the tqdm bar for validation."""
        has_main_bar = trainer_fn(self.trainer) != "validate"  # no training bar under trainer.validate()
        return Tqdm(desc=self.validation_description, position=(2 * self.process_position + has_main_bar),
                    disable=self.is_disabled, leave=not has_main_bar, dynamic_ncols=True, file=sys.stdout,
                    bar_format=self.BAR_FORMAT)

    def init_test_tqdm(self) -> Tqdm:
        """Override this to customize the tqdm bar for testing."""
        return Tqdm(desc="Testing", position=(2 * self.process_position), disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT)

    def _set_postfix(self, trainer: Any, pl_module: Any, force: bool) -> None:
        if self._metrics_due(force):
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    # -- sanity check and training -------------------------------------------------------------------
    def on_sanity_check_start(self, *_: Any) -> None:
        self.val_progress_bar = self.init_sanity_tqdm()
        self.train_progress_bar = Tqdm(disable=True)  # a placeholder until training starts

    def on_sanity_check_end(self, *_: Any) -> None:
        self.val_progress_bar.close()
        self.train_progress_bar.close()

    def on_train_start(self, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")
        self._last_metrics_time = -math.inf

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = batch_idx + 1
        if self._train_progress_bar is not None and self._should_update(n, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, n)
            self._set_postfix(trainer, pl_module, force=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self._set_postfix(trainer, pl_module, force=True)
        if self._leave:
            self.train_progress_bar.close()

    def on_train_end(self, *_: Any) -> None:
        self.train_progress_bar.close()

    # -- validation -------------------------------------------------------------------------------
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.val_progress_bar = self.init_validation_tqdm()

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.val_progress_bar.reset()
        self.val_progress_bar.total = convert_inf(self.total_val_batches_current_dataloader)
        self.val_progress_bar.initial = 0
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self.val_progress_bar.set_description(f"{desc} DataLoader {dataloader_idx}")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._val_progress_bar is not None and self._should_update(n, self.val_progress_bar.total):
            _update_n(self.val_progress_bar, n)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer_fn(trainer) == "fit":
            self._set_postfix(trainer, pl_module, force=True)

    # -- test and predict (for a Trainer that runs them) ------------------------------------------------
    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.test_progress_bar = self.init_test_tqdm()

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.test_progress_bar.reset()
        self.test_progress_bar.total = convert_inf(self.total_test_batches_current_dataloader)
        self.test_progress_bar.initial = 0
        self.test_progress_bar.set_description(f"{self.test_description} DataLoader {dataloader_idx}")

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._test_progress_bar is not None and self._should_update(n, self.test_progress_bar.total):
            _update_n(self.test_progress_bar, n)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.test_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.predict_progress_bar = self.init_predict_tqdm()

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.predict_progress_bar.reset()
        self.predict_progress_bar.total = convert_inf(self.total_predict_batches_current_dataloader)
        self.predict_progress_bar.initial = 0
        self.predict_progress_bar.set_description(f"{self.predict_description} DataLoader {dataloader_idx}")

    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._predict_progress_bar is not None and self._should_update(n, self.predict_progress_bar.total):
            _update_n(self.predict_progress_bar, n)

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.predict_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        for bar in (self._val_progress_bar, self._train_progress_bar):
            if bar is not None:
                bar.close()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        active = None
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar,
                    self._predict_progress_bar):
            if bar is not None and not bar.disable:
                active = bar
                break
        if active is not None:
            active.write(sep.join(map(str, args)), **kwargs)

    def _should_update(self, current: int, total: int | None) -> bool:
        return self.is_enabled and (current % self.refresh_rate == 0 or current == total)

    @staticmethod
    def _resolve_refresh_rate(refresh_rate: int) -> int:
        if os.getenv("COLAB_GPU") and refresh_rate == 1:
            return 20  # a lower rate crashes Colab (as Lightning)
        if "TQDM_MINITERS" in os.environ:
            return max(int(os.environ["TQDM_MINITERS"]), refresh_rate)
        return refresh_rate


def _human(n: int) -> str:
    for unit in ("", " K", " M", " B", " T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else str(n)
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} P"


class ModelSummary(Callback):
    """Prints a table of the module's direct children (name, type, parameters, mode) and the
    trainable / total parameter counts when fitting starts."""

    def __init__(self, max_depth: int = 1) -> None:
        self.max_depth = max_depth

    @staticmethod
    def summarize(module: torch.nn.Module, max_depth: int = 1) -> str:
        rows = []
        for name, child in module.named_modules():
            depth = name.count(".") + 1 if name else 0
            if depth == 0 or depth > max_depth:
                continue
            n = sum(p.numel() for p in child.parameters())
            rows.append((str(len(rows)), name, type(child).__name__, _human(n), "train" if child.training else "eval"))
        header = ("", "Name", "Type", "Params", "Mode")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
        sep = "-" * len(line(header))
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
        out = [sep, line(header), sep, *map(line, rows), sep,
               f"{_human(trainable):<10} Trainable params",
               f"{_human(total - trainable):<10} Non-trainable params",
               f"{_human(total):<10} Total params",
               f"{size_mb:<10.3f} Total estimated model params size (MB)"]
        return "\n".join(out)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            print(self.summarize(pl_module, self.max_depth))
