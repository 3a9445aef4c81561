"""BasePredictionWriter: write predictions as `Trainer.predict` makes them, per batch and/or once
at the end (Lightning 2.6's ``lightning.pytorch.callbacks.BasePredictionWriter``).

Subclass it and override `write_on_batch_end` and/or `write_on_epoch_end`. Each gets the dataset
indices of what it writes (``batch_indices``), which the prediction loop records as its loaders
draw them only while a writer is present. With ``write_interval="epoch"`` the predictions of the
whole run are kept (on the CPU) for the end, also with ``predict(return_predictions=False)``.
"""
from __future__ import annotations

__all__ = ["BasePredictionWriter", "WriteInterval"]

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from mopt_fast.callbacks.callback import Callback
from mopt_fast.core.states import _StrEnum
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer


class WriteInterval(_StrEnum):
    """When a writer writes (a string enum, as Lightning's: ``WriteInterval.BATCH == "batch"``)."""

    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


class BasePredictionWriter(Callback):
    """`write_interval`: "batch" (`write_on_batch_end` after each predict batch), "epoch"
    (`write_on_epoch_end` once all loaders are done) or "batch_and_epoch" (both)."""

    def __init__(self, write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch") -> None:
        if write_interval not in list(WriteInterval):
            raise MisconfigurationException(f"`write_interval` should be one of {[i.value for i in WriteInterval]}.")
        self.interval = WriteInterval(write_interval)

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        # The indices come from the loader's batch sampler, which a `dataloader_iter` step bypasses.
        # (Lightning's test: a positional parameter of that name after the first.)
        if "dataloader_iter" in inspect.getfullargspec(pl_module.predict_step).args[1:]:
            raise NotImplementedError("The `PredictionWriterCallback` does not support using `dataloader_iter`.")

    def write_on_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        """Override with the logic to write a single batch."""
        raise NotImplementedError()

    def write_on_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        """Override with the logic to write all batches: `predictions` as `Trainer.predict` returns
        them; `batch_indices`, per loader then batch."""
        raise NotImplementedError()

    def on_predict_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.interval.on_batch:
            indices = trainer.predict_loop.current_batch_indices
            self.write_on_batch_end(trainer, pl_module, outputs, indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self.interval.on_epoch:
            loop = trainer.predict_loop
            self.write_on_epoch_end(trainer, pl_module, loop.predictions, loop.epoch_batch_indices)
