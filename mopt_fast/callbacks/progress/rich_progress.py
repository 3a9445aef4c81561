"""RichProgressBar: Lightning 2.6's progress bar drawn with `rich` (an optional dependency).

The same bars, columns, theme and constructor as Lightning's (refresh_rate in refreshes per
second, leave, theme, console_kwargs); the metrics come from `get_metrics` as in every
`ProgressBar`, read back from the device at most every `refresh_interval` seconds (mopt_fast's,
see callbacks.ProgressBar; 0 reads them after every batch, as Lightning does).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.callbacks.callback import trainer_fn
from mopt_fast.callbacks.progress.progress_bar import ProgressBar, SwitchableBar

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["RichProgressBar", "RichProgressBarTheme"]

try:
    from rich import get_console, reconfigure
    from rich.console import RenderableType
    from rich.live import _RefreshThread as _RichRefreshThread
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
    from rich.progress_bar import ProgressBar as _RichBar
    from rich.style import Style
    from rich.text import Text

    _RICH_AVAILABLE = True
except ImportError:
    _RICH_AVAILABLE = False

_IS_INTERACTIVE = hasattr(sys, "ps1")

if _RICH_AVAILABLE:

    class CustomBarColumn(BarColumn):
        """A bar that pulses for loaders without a length."""

        def render(self, task: Task) -> _RichBar:
            # rich's Task allows no total (an indeterminate bar); these bars always have one (inf
            # for a loader without a length, see CustomInfiniteTask).
            assert task.total is not None and task.remaining is not None
            return _RichBar(
                total=max(0, task.total), completed=max(0, task.completed),
                width=None if self.bar_width is None else max(1, self.bar_width),
                pulse=not task.started or not math.isfinite(task.remaining),
                animation_time=task.get_time(), style=self.style, complete_style=self.complete_style,
                finished_style=self.finished_style, pulse_style=self.pulse_style,
            )

    @dataclass
    class CustomInfiniteTask(Task):
        """A task without a total (a loader without a length)."""

        @property
        def time_remaining(self) -> float | None:
            return None

    class _RefreshThread(_RichRefreshThread):
        """Redraws only when something changed (`refresh_cond`), at most refresh_per_second."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.refresh_cond = False
            super().__init__(*args, **kwargs)

        def run(self) -> None:
            while not self.done.is_set():
                if self.refresh_cond:
                    with self.live._lock:
                        self.live.refresh()
                    self.refresh_cond = False
                time.sleep(1 / self.refresh_per_second)

    class CustomProgress(Progress):
        """rich's Progress with the soft-refresh thread and tasks of infinite size."""

        def start(self) -> None:
            if self.live.auto_refresh:
                self.live._refresh_thread = _RefreshThread(self.live, self.live.refresh_per_second)
                self.live.auto_refresh = False
            super().start()
            if self.live._refresh_thread:
                self.live.auto_refresh = True
                self.live._refresh_thread.start()

        def stop(self) -> None:
            thread = self.live._refresh_thread
            super().stop()
            if thread:
                thread.stop()
                thread.join()

        def soft_refresh(self) -> None:
            if self.live.auto_refresh and isinstance(self.live._refresh_thread, _RefreshThread):
                self.live._refresh_thread.refresh_cond = True

        def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                     visible: bool = True, **fields: Any) -> TaskID:
            assert total is not None  # the bars always give a total (see CustomBarColumn)
            if not math.isfinite(total):
                task = CustomInfiniteTask(self._task_index, description, total, completed, visible=visible,
                                          fields=fields, _get_time=self.get_time, _lock=self._lock)
                with self._lock:
                    self._tasks[self._task_index] = task
                    if start:
                        self.start_task(self._task_index)
                    new_index = self._task_index
                    self._task_index = TaskID(int(self._task_index) + 1)
                self.refresh()
                return new_index
            return super().add_task(description, start, total, completed, visible, **fields)

    class CustomTimeColumn(ProgressColumn):
        max_refresh = 0.5  # twice a second, no jitter

        def __init__(self, style: str | Style) -> None:
            self.style = style
            super().__init__()

        def render(self, task: Task) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            remaining = task.time_remaining
            elapsed_delta = "-:--:--" if elapsed is None else str(timedelta(seconds=int(elapsed)))
            remaining_delta = "-:--:--" if remaining is None else str(timedelta(seconds=int(remaining)))
            return Text(f"{elapsed_delta} • {remaining_delta}", style=self.style)

    class BatchesProcessedColumn(ProgressColumn):
        def __init__(self, style: str | Style) -> None:
            self.style = style
            super().__init__()

        def render(self, task: Task) -> RenderableType:
            total = task.total if task.total != float("inf") else "--"
            return Text(f"{int(task.completed)}/{total}", style=self.style)

    class ProcessingSpeedColumn(ProgressColumn):
        def __init__(self, style: str | Style) -> None:
            self.style = style
            super().__init__()

        def render(self, task: Task) -> RenderableType:
            speed = f"{task.speed:>.2f}" if task.speed is not None else "0.00"
            return Text(f"{speed}it/s", style=self.style)

    class MetricsTextColumn(ProgressColumn):
        """The metrics, on the training bar only; each finished epoch's bar keeps its last metrics."""

        def __init__(self, trainer: CallbackTrainer, style: str | Style, text_delimiter: str,
                     metrics_format: str) -> None:
            self._trainer = trainer
            self._tasks: dict[Any, Any] = {}
            self._current_task_id: Any = 0
            self._metrics: dict[Any, Any] = {}
            self._style = style
            self._text_delimiter = text_delimiter
            self._metrics_format = metrics_format
            super().__init__()

        def update(self, metrics: dict[Any, Any]) -> None:
            self._metrics = metrics  # rendered by rich's thread: never read the trainer from there

        def render(self, task: Task) -> Text:
            trainer = self._trainer
            bar = trainer.progress_bar_callback
            if trainer_fn(trainer) != "fit" or trainer.sanity_checking or bar.train_progress_bar_id != task.id:
                return Text()
            if trainer.training and task.id not in self._tasks:
                self._tasks[task.id] = "None"
                if self._renderable_cache and self._current_task_id in self._renderable_cache:
                    self._tasks[self._current_task_id] = self._renderable_cache[self._current_task_id][1]
                self._current_task_id = task.id
            if trainer.training and task.id != self._current_task_id:
                return self._tasks[task.id]
            return Text(self._text_delimiter.join(self._metrics_texts()), justify="left", style=self._style)

        def _metrics_texts(self) -> Any:
            for name, value in self._metrics.items():
                if not isinstance(value, str):
                    try:
                        value = f"{value:{self._metrics_format}}"
                    except (TypeError, ValueError):
                        value = str(value)
                yield f"{name}: {value}"


@dataclass
class RichProgressBarTheme:
    """Styles of the bar's parts (rich style strings or Styles), the metrics' delimiter and format."""

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


class RichProgressBar(SwitchableBar, ProgressBar):
    """Lightning's rich progress bar (``pip install rich``).

    Args:
        refresh_rate: redraws per second (0 disables the bar).
        leave: keep each finished epoch's bar in the terminal.
        theme: a `RichProgressBarTheme`.
        console_kwargs: arguments for rich's Console.
        refresh_interval: mopt_fast's, see `ProgressBar`.
    """

    # rich's task ids, None while a bar is not shown (set in `_reset_progress_bar_ids`)
    train_progress_bar_id: TaskID | None
    val_sanity_progress_bar_id: TaskID | None
    val_progress_bar_id: TaskID | None
    test_progress_bar_id: TaskID | None
    predict_progress_bar_id: TaskID | None

    def __init__(self, refresh_rate: int = 100, leave: bool = False,
                 theme: RichProgressBarTheme = RichProgressBarTheme(),  # noqa: B008 (Lightning's default)
                 console_kwargs: dict[str, Any] | None = None, *, refresh_interval: float = 0.5) -> None:
        if not _RICH_AVAILABLE:
            raise ModuleNotFoundError(
                "`RichProgressBar` requires `rich` >= 10.2.2. Install it by running `pip install -U rich`.")
        super().__init__(refresh_interval)
        self._refresh_rate = refresh_rate
        self._leave = leave
        self._console: Any = None
        self._console_kwargs = console_kwargs or {}
        self._enabled = True
        self.progress: Any = None
        self._reset_progress_bar_ids()
        self._metric_component: Any = None
        self._progress_stopped = False
        self.theme = theme

    @property
    def refresh_rate(self) -> float:
        return self._refresh_rate

    def _task(self, task_id: Any) -> Any:
        assert self.progress is not None and task_id is not None
        return self.progress.tasks[task_id]

    @property
    def train_progress_bar(self) -> Any:
        return self._task(self.train_progress_bar_id)

    @property
    def val_sanity_check_bar(self) -> Any:
        return self._task(self.val_sanity_progress_bar_id)

    @property
    def val_progress_bar(self) -> Any:
        return self._task(self.val_progress_bar_id)

    @property
    def test_progress_bar(self) -> Any:
        return self._task(self.test_progress_bar_id)

    def _init_progress(self, trainer: CallbackTrainer) -> None:
        if self.is_enabled and (self.progress is None or self._progress_stopped):
            self._reset_progress_bar_ids()
            reconfigure(**self._console_kwargs)
            self._console = get_console()
            if hasattr(self._console, "_live_stack"):  # rich >= 14.1 nests Live displays
                if len(self._console._live_stack) > 0:
                    self._console.clear_live()
            else:
                self._console.clear_live()
            self._metric_component = MetricsTextColumn(
                trainer, self.theme.metrics, self.theme.metrics_text_delimiter, self.theme.metrics_format)
            self.progress = CustomProgress(
                *self.configure_columns(trainer), self._metric_component, auto_refresh=True,
                refresh_per_second=self.refresh_rate if self.is_enabled else 1, disable=self.is_disabled,
                console=self._console,
            )
            self.progress.start()
            self._progress_stopped = False

    def refresh(self, hard: bool = False) -> None:
        if self.progress:
            if hard or _IS_INTERACTIVE:
                self.progress.refresh()
            else:
                self.progress.soft_refresh()

    def on_train_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._init_progress(trainer)

    def on_predict_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._init_progress(trainer)

    def on_test_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._init_progress(trainer)

    def on_validation_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._init_progress(trainer)

    def on_sanity_check_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._init_progress(trainer)

    def on_sanity_check_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self.progress is not None and self.val_sanity_progress_bar_id is not None:
            self.progress.update(self.val_sanity_progress_bar_id, advance=0, visible=False)
        self.refresh()

    def on_train_epoch_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self.is_disabled:
            return
        total = self.total_train_batches
        description = self._get_train_description(trainer.current_epoch)
        if self.train_progress_bar_id is not None and self._leave:
            self._stop_progress()
            self._init_progress(trainer)
        if self.progress is not None:
            if self.train_progress_bar_id is None:
                self.train_progress_bar_id = self._add_task(total, description)
            else:
                self.progress.reset(self.train_progress_bar_id, total=total, description=description, visible=True)
        self._last_metrics_time = -math.inf
        self.refresh()

    def on_validation_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        total = self.total_val_batches_current_dataloader
        if trainer.sanity_checking:
            if self.val_sanity_progress_bar_id is not None:
                self.progress.update(self.val_sanity_progress_bar_id, advance=0, visible=False)
            self.val_sanity_progress_bar_id = self._add_task(total, self.sanity_check_description, visible=False)
        else:
            if self.val_progress_bar_id is not None:
                self.progress.update(self.val_progress_bar_id, advance=0, visible=False)
            self.val_progress_bar_id = self._add_task(total, self.validation_description, visible=False)
        self.refresh()

    def _add_task(self, total_batches: int | float, description: str, visible: bool = True) -> Any:
        return self.progress.add_task(
            f"[{self.theme.description}]{description}" if self.theme.description else description,
            total=total_batches, visible=visible,
        )

    def _update(self, bar_id: Any, current: int, visible: bool = True, hard: bool = False) -> None:
        if self.progress is not None and self.is_enabled and bar_id is not None:
            self.progress.update(bar_id, completed=current, visible=visible)
            self.refresh(hard=hard)

    def on_validation_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self.is_enabled and self.val_progress_bar_id is not None and trainer_fn(trainer) == "fit":
            self.progress.update(self.val_progress_bar_id, advance=0, visible=False)
            self.refresh()

    def on_validation_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if trainer_fn(trainer) == "fit":
            self._update_metrics(trainer, pl_module, force=True)
        self.reset_dataloader_idx_tracker()

    def on_test_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    def on_predict_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    def on_test_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        if self.test_progress_bar_id is not None:
            self.progress.update(self.test_progress_bar_id, advance=0, visible=False)
        self.test_progress_bar_id = self._add_task(self.total_test_batches_current_dataloader, self.test_description)
        self.refresh()

    def on_predict_batch_start(self, trainer: CallbackTrainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        if self.predict_progress_bar_id is not None:
            self.progress.update(self.predict_progress_bar_id, advance=0, visible=False)
        self.predict_progress_bar_id = self._add_task(self.total_predict_batches_current_dataloader,
                                                      self.predict_description)
        self.refresh()

    def on_train_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:  # a fit resumed mid-epoch
            self.train_progress_bar_id = self._add_task(self.total_train_batches,
                                                        self._get_train_description(trainer.current_epoch))
        self._update(self.train_progress_bar_id, batch_idx + 1)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        self._update_metrics(trainer, pl_module, force=True)
        self.refresh()

    def on_validation_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled:
            return
        if trainer.sanity_checking:
            if self.val_sanity_progress_bar_id is not None:
                self._update(self.val_sanity_progress_bar_id, batch_idx + 1)
            return
        if self.val_progress_bar_id is not None:
            self._update(self.val_progress_bar_id, batch_idx + 1)

    def on_test_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled or self.test_progress_bar_id is None:
            return
        self._update(self.test_progress_bar_id, batch_idx + 1)

    def on_predict_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled or self.predict_progress_bar_id is None:
            return
        self._update(self.predict_progress_bar_id, batch_idx + 1)

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None:
            description += f"/{self.trainer.max_epochs - 1}"
        if len(self.validation_description) > len(description):  # no flicker between the two descriptions
            description = f"{description:{len(self.validation_description)}}"
        return description

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self._progress_stopped = True  # the next stage starts a new one

    def _reset_progress_bar_ids(self) -> None:
        self.train_progress_bar_id = None
        self.val_sanity_progress_bar_id = None
        self.val_progress_bar_id = None
        self.test_progress_bar_id = None
        self.predict_progress_bar_id = None

    def get_metrics(self, trainer: CallbackTrainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in items.items()}

    def _update_metrics(self, trainer: CallbackTrainer, pl_module: LightningModule, force: bool = False) -> None:
        if not self.is_enabled or self._metric_component is None:
            return
        if self._metrics_due(force):
            self._metric_component.update(self.get_metrics(trainer, pl_module))

    def teardown(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_progress()

    def on_exception(self, trainer: CallbackTrainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_progress()

    def configure_columns(self, trainer: CallbackTrainer) -> list:
        """The columns before the metrics; override to change them."""
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(complete_style=self.theme.progress_bar, finished_style=self.theme.progress_bar_finished,
                            pulse_style=self.theme.progress_bar_pulse),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
            ProcessingSpeedColumn(style=self.theme.processing_speed),
        ]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["progress"] = None  # rich's objects hold locks
        state["_console"] = None
        return state
