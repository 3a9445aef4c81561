"""Callbacks: the base class, the tqdm progress bar and the model summary.

A callback's hooks take ``(trainer, pl_module, ...)`` and run before the module's hook of the same
name. The Trainer only calls the hooks a callback overrides.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch

from mopt_fast.hooks import EvaluationCallbackHooks

__all__ = ["Callback", "TQDMProgressBar", "ModelSummary", "HOOKS"]

HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_exception",
)


class Callback(EvaluationCallbackHooks):
    """Override any of the hooks in `HOOKS`; each gets ``(trainer, pl_module, *hook_args)``."""

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
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None: ...


class TQDMProgressBar(Callback):
    """A tqdm bar per training epoch with the ``prog_bar=True`` metrics, and one per validation run.

    The metrics shown are read back from the device at most every `refresh_interval` seconds and
    at the end of the epoch, not after every batch: that read is a host-device sync.
    """

    def __init__(self, refresh_interval: float = 0.5, leave: bool = True) -> None:
        self.refresh_interval = refresh_interval
        self.leave = leave
        self._train_bar: Any = None
        self._val_bar: Any = None
        self._last_postfix = 0.0

    @staticmethod
    def _tqdm(**kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(file=sys.stderr, dynamic_ncols=True, smoothing=0, **kwargs)

    def _postfix(self, trainer: Any) -> dict[str, str]:
        return {k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in trainer.progress_bar_metrics.items()}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if self._train_bar is not None:
            self._train_bar.close()
        total = trainer.num_training_batches
        self._train_bar = self._tqdm(
            total=None if total == float("inf") else int(total), desc=f"Epoch {trainer.current_epoch}",
            leave=self.leave, unit="it",
        )
        self._last_postfix = time.monotonic()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self._train_bar
        if bar is None:
            return
        bar.update(1)
        now = time.monotonic()
        if now - self._last_postfix >= self.refresh_interval:
            self._last_postfix = now
            bar.set_postfix(self._postfix(trainer), refresh=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._train_bar is not None:
            self._train_bar.set_postfix(self._postfix(trainer), refresh=True)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._val_bar = self._tqdm(total=None, desc="Validation", leave=False, position=1)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._val_bar is not None:
            self._val_bar.update(1)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._train_bar is not None:
            self._train_bar.set_postfix(self._postfix(trainer), refresh=True)

    def _close(self) -> None:
        for bar in (self._val_bar, self._train_bar):
            if bar is not None:
                bar.close()
        self._val_bar = self._train_bar = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()


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
