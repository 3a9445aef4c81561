"""TQDMProgressBar: Lightning's default progress bar, on tqdm."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.callback import trainer_fn
from mopt_fast.callbacks.progress.progress_bar import ProgressBar, SwitchableBar

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["TQDMProgressBar", "Tqdm"]


def _load_tqdm() -> type:
    # As Lightning: tqdm.auto (notebook widgets) only when ipywidgets is installed.
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


if TYPE_CHECKING:  # tqdm.auto's class subclasses this one
    from tqdm import tqdm as _tqdm
else:
    _tqdm = _load_tqdm()


_PAD_SIZE = 5


class Tqdm(_tqdm):
    """tqdm whose float and string numbers are padded with zeros, so the bar does not flicker."""

    @staticmethod
    def format_num(n: int | float | str) -> str:
        padded = isinstance(n, (float, str))
        s: str = n if isinstance(n, str) else _tqdm.format_num(n)
        if padded and "e" not in s:
            if "." not in s and len(s) < _PAD_SIZE:
                try:
                    float(s)
                except ValueError:
                    return s
                s += "."
            s += "0" * (_PAD_SIZE - len(s))
        return s


def convert_inf(x: int | float | None) -> int | float | None:
    """tqdm takes no inf or NaN total: None instead."""
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return x


def _update_n(bar: Any, value: int, every_update: bool = False) -> None:
    """Sets the bar's count; redraws it at most every `mininterval` seconds (tqdm's 0.1 s) and at
    its end: a redraw formats and writes the whole line, too costly for every fast step.
    `every_update` (the bar's ``refresh_interval=0``): at every update, as Lightning."""
    if not bar.disable:
        bar.n = value
        now = time.monotonic()
        if every_update or value == bar.total or now - getattr(bar, "_mopt_fast_drawn", -math.inf) >= bar.mininterval:
            bar._mopt_fast_drawn = now
            bar.refresh()


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
        refresh_interval: mopt_fast's, see `ProgressBar` (0: Lightning's points: the metrics read and the bar
            redrawn at every update).

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

    def _set_postfix(self, trainer: CallbackTrainer, pl_module: LightningModule, force: bool) -> None:
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

    def on_train_epoch_start(self, trainer: CallbackTrainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")
        self._last_metrics_time = -math.inf

    def on_train_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = batch_idx + 1
        if self._train_progress_bar is not None and self._should_update(n, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, n, self.refresh_interval == 0)
            self._set_postfix(trainer, pl_module, force=False)

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self._set_postfix(trainer, pl_module, force=True)
        if self._leave:
            self.train_progress_bar.close()

    def on_train_end(self, *_: Any) -> None:
        self.train_progress_bar.close()

    # -- validation -------------------------------------------------------------------------------
    def on_validation_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_progress_bar = self.init_validation_tqdm()

    def on_validation_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.val_progress_bar.reset()
        self.val_progress_bar.total = convert_inf(self.total_val_batches_current_dataloader)
        self.val_progress_bar.initial = 0
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        self.val_progress_bar.set_description(f"{desc} DataLoader {dataloader_idx}")

    def on_validation_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._val_progress_bar is not None and self._should_update(n, self.val_progress_bar.total):
            _update_n(self.val_progress_bar, n, self.refresh_interval == 0)

    def on_validation_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer_fn(trainer) == "fit":
            self._set_postfix(trainer, pl_module, force=True)

    # -- test and predict (for a Trainer that runs them) ------------------------------------------------
    def on_test_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.test_progress_bar = self.init_test_tqdm()

    def on_test_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.test_progress_bar.reset()
        self.test_progress_bar.total = convert_inf(self.total_test_batches_current_dataloader)
        self.test_progress_bar.initial = 0
        self.test_progress_bar.set_description(f"{self.test_description} DataLoader {dataloader_idx}")

    def on_test_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._test_progress_bar is not None and self._should_update(n, self.test_progress_bar.total):
            _update_n(self.test_progress_bar, n, self.refresh_interval == 0)

    def on_test_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.test_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.predict_progress_bar = self.init_predict_tqdm()

    def on_predict_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.predict_progress_bar.reset()
        self.predict_progress_bar.total = convert_inf(self.total_predict_batches_current_dataloader)
        self.predict_progress_bar.initial = 0
        self.predict_progress_bar.set_description(f"{self.predict_description} DataLoader {dataloader_idx}")

    def on_predict_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        n = batch_idx + 1
        if self._predict_progress_bar is not None and self._should_update(n, self.predict_progress_bar.total):
            _update_n(self.predict_progress_bar, n, self.refresh_interval == 0)

    def on_predict_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.predict_progress_bar.close()
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer: CallbackTrainer, pl_module: LightningModule, exception: BaseException) -> None:
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

