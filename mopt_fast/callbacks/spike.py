"""SpikeDetection (Lightning 2.6's ``lightning.pytorch.callbacks.SpikeDetection``): stops the fit with
`TrainingSpikeException` when the training loss jumps away from its running mean, after writing the
batch indices to skip on a rerun (the spiking batch and the one before it) to a JSON file.

The running mean is the mean of the last `window` finite losses in float32 (torchmetrics'
``Running(MeanMetric)``, which Lightning uses, computed here without torchmetrics).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from mopt_fast.callbacks.callback import Callback

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class TrainingSpikeException(RuntimeError):
    """The training loss spiked (Lightning's ``lightning.fabric.utilities.spike.TrainingSpikeException``)."""

    def __init__(self, batch_idx: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args, **kwargs)


class _RunningMean:
    """The mean of the last `window` values, in float32; NaN before the first."""

    def __init__(self, window: int) -> None:
        self.values: deque[torch.Tensor] = deque(maxlen=window)  # each update's sum
        self.counts: deque[int] = deque(maxlen=window)  # and its number of elements

    def update(self, value: torch.Tensor) -> None:
        self.values.append(value.detach().to(torch.float32).sum())
        self.counts.append(value.numel())

    def compute(self) -> torch.Tensor:
        if not self.values:
            return torch.tensor(float("nan"))
        return torch.stack(list(self.values)).sum() / sum(self.counts)


class SpikeDetection(Callback):
    """Watches the training loss (the tensor `training_step` returns, or its ``"loss"``).

    Args:
        mode: "min" (a loss: rises are spikes) or "max".
        window: how many recent losses the running mean covers.
        warmup: batches of each epoch before spikes are looked for.
        atol: a spike differs from the running mean by at least this much (None: any amount).
        rtol: ... and by at least ``rtol`` times the running mean (None: any amount).
        exclude_batches_path: the JSON file (or its folder) for the batches to skip; default
            ``<default_root_dir>/skip_batches.json``.
        finite_only: a non-finite loss is a spike; with False it is not, and it stays out of
            the running mean.
    """

    def __init__(self, mode: Literal["min", "max"] = "min", window: int = 10, warmup: int = 1,
                 atol: float | None = None, rtol: float | None = 2.0,
                 exclude_batches_path: str | os.PathLike | None = None, finite_only: bool = True) -> None:
        self.last_val: torch.Tensor | float = 0.0
        self.running_mean = _RunningMean(window)
        self.mode = mode
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.bad_batches: list[int] = []
        self.exclude_batches_path: str | os.PathLike | None = exclude_batches_path
        self.finite_only = finite_only

    @torch.no_grad()
    def on_train_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if isinstance(outputs, torch.Tensor):
            loss = outputs.detach()
        elif isinstance(outputs, Mapping):
            loss = outputs["loss"].detach()
        else:
            raise TypeError(f"outputs have to be of type torch.Tensor or Mapping, got {type(outputs).__qualname__}")
        if self.exclude_batches_path is None:
            self.exclude_batches_path = os.path.join(trainer.default_root_dir, "skip_batches.json")
        if not str(self.exclude_batches_path).endswith(".json"):
            self.exclude_batches_path = os.path.join(self.exclude_batches_path, "skip_batches.json")
        is_spike = bool(batch_idx >= self.warmup and self._is_spike(loss))
        strategy = trainer.strategy
        strategy.barrier()
        # Each rank looks at its own loss; a spike on any rank stops all of them.
        if strategy.reduce_boolean_decision(is_spike, all=False):
            self._handle_spike(trainer, batch_idx)
        elif self.finite_only or strategy.reduce_boolean_decision(bool(torch.isfinite(loss).all()), all=True):
            self.running_mean.update(loss)
            self.last_val = loss

    def _is_spike(self, loss: torch.Tensor) -> bool:
        running = self.running_mean.compute().to(loss.device)
        if self.finite_only and not torch.isfinite(loss):
            return True
        if self._is_better(loss - self.last_val):
            return False
        return self._check_atol(loss, running) and self._check_rtol(loss, running)

    def _handle_spike(self, trainer: CallbackTrainer, batch_idx: int) -> None:
        # The batch before may have corrupted the weights that this one's loss shows.
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if trainer.global_rank == 0:
            assert self.exclude_batches_path is not None
            os.makedirs(os.path.dirname(self.exclude_batches_path), exist_ok=True)
            with open(self.exclude_batches_path, "w") as f:
                json.dump(self.bad_batches, f, indent=4)
        raise TrainingSpikeException(batch_idx=batch_idx)

    def _check_atol(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return self.atol is None or bool(abs(a - b) >= abs(self.atol))

    def _check_rtol(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        return self.rtol is None or bool(abs(a - b) >= abs(self.rtol * b))

    def _is_better(self, diff: torch.Tensor) -> bool:
        if self.mode == "min":
            return bool((diff <= 0.0).all())
        if self.mode == "max":
            return bool((diff >= 0).all())
        raise ValueError(f"Invalid mode. Has to be min or max, found {self.mode}")

    def state_dict(self) -> dict[str, Any]:
        # "running" and "mean": torchmetrics' (empty) state dicts of Lightning's running mean,
        # whose values are not checkpointed either.
        return {
            "last_val": self.last_val.item() if isinstance(self.last_val, torch.Tensor) else self.last_val,
            "mode": self.mode, "warmup": self.warmup, "atol": self.atol, "rtol": self.rtol,
            "bad_batches": self.bad_batches, "bad_batches_path": self.exclude_batches_path,
            "running": OrderedDict(), "mean": OrderedDict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.mode = state_dict["mode"]
        self.warmup = state_dict["warmup"]
        self.atol = state_dict["atol"]
        self.rtol = state_dict["rtol"]
        self.bad_batches = state_dict["bad_batches"]
        self.exclude_batches_path = state_dict["bad_batches_path"]
