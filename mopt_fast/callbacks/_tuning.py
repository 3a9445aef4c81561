"""What the learning-rate finder and the batch-size finder share: Lightning's attribute lookup
across the module, its hyperparameters and the data module (``lightning_hasattr`` and siblings),
the logger that stands in for the user's during the trials, the out-of-memory test, and the
temporary checkpoint the finders restore the run from.

The Trainer side of the finders (running the fit loop as a trial, putting the run back) is the
`TuningTrainer` protocol (core/protocol.py).
"""
from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.loggers.logger import Logger

if TYPE_CHECKING:
    from mopt_fast.core.protocol import TuningTrainer

__all__ = ["DummyLogger", "free_memory", "is_oom_error", "lightning_getattr", "lightning_hasattr",
           "lightning_setattr", "remove_checkpoint", "temporary_checkpoint"]


# -- attributes of the module, its hyperparameters and the data module -----------------------------
def _holders(model: Any, attribute: str) -> list[Any]:
    """Every object or mapping that holds `attribute`: the module, its hparams, the Trainer's data
    module and its hparams, in that order (Lightning's `_lightning_get_all_attr_holders`)."""
    holders: list[Any] = []
    if hasattr(model, attribute):
        holders.append(model)
    if hasattr(model, "hparams") and attribute in model.hparams:
        holders.append(model.hparams)
    trainer = getattr(model, "_trainer", None)  # the module's own slot: no error when it is not attached
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    if datamodule is not None:
        if hasattr(datamodule, attribute):
            holders.append(datamodule)
        if hasattr(datamodule, "hparams") and attribute in datamodule.hparams:
            holders.append(datamodule.hparams)
    return holders


def lightning_hasattr(model: Any, attribute: str) -> bool:
    """Whether the module, its hparams or the data module (or its hparams) has `attribute`."""
    return bool(_holders(model, attribute))


def lightning_getattr(model: Any, attribute: str) -> Any:
    """`attribute` of the last holder (Lightning reads the last one, for backward compatibility)."""
    holders = _holders(model, attribute)
    if not holders:
        raise AttributeError(
            f"{attribute} is neither stored in the model namespace nor the `hparams` namespace/dict, nor the datamodule."
        )
    holder = holders[-1]
    return holder[attribute] if isinstance(holder, dict) else getattr(holder, attribute)


def lightning_setattr(model: Any, attribute: str, value: Any) -> None:
    """`attribute` set on every holder, so the module, hparams and data module agree."""
    holders = _holders(model, attribute)
    if not holders:
        raise AttributeError(
            f"{attribute} is neither stored in the model namespace nor the `hparams` namespace/dict, nor the datamodule."
        )
    for holder in holders:
        if isinstance(holder, dict):
            holder[attribute] = value
        else:
            setattr(holder, attribute, value)


# -- the trials' logger ---------------------------------------------------------------------------
class _DummyExperiment:
    """Accepts any call and does nothing."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, _: str) -> Any:
        return self.nop

    def __getitem__(self, idx: int) -> _DummyExperiment:
        return self


class DummyLogger(Logger):
    """A logger that logs nothing (Lightning's `DummyLogger`): stands in for the user's loggers
    during the finders' trials, so that their steps are not logged while the Trainer still has a
    logger (what decides, e.g., the warning about fewer batches than the logging interval)."""

    def __init__(self) -> None:
        super().__init__(name="", version="")
        self._experiment = _DummyExperiment()

    @property
    def experiment(self) -> _DummyExperiment:
        return self._experiment

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


# -- out of memory --------------------------------------------------------------------------------
_OOM_MESSAGES = (("CUDA", "out of memory"), ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",),
                 ("DefaultCPUAllocator: can't allocate memory",))


def is_oom_error(exception: BaseException) -> bool:
    """A RuntimeError with one argument whose message is CUDA's or the CPU allocator's out-of-memory
    one (or cuDNN's "not supported" that a full device gives): Lightning's `is_oom_error`."""
    if not isinstance(exception, RuntimeError) or len(exception.args) != 1 or not isinstance(exception.args[0], str):
        return False
    message = exception.args[0]
    return any(all(part in message for part in parts) for parts in _OOM_MESSAGES)


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back (between batch-size trials)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:
            if not is_oom_error(exc):
                raise


# -- the checkpoint the finders put the run back from ------------------------------------------------
def temporary_checkpoint(trainer: TuningTrainer, prefix: str) -> str:
    """Save the run now to ``<default_root_dir>/.<prefix>_<uuid>.ckpt`` (the path rank 0 chose)."""
    path = os.path.join(trainer.default_root_dir, f".{prefix}_{uuid.uuid4()}.ckpt")
    path = trainer.strategy.broadcast(path)
    trainer.save_tuning_checkpoint(path)
    return path


def remove_checkpoint(trainer: TuningTrainer, path: str) -> None:
    if trainer.is_global_zero and os.path.exists(path):
        os.remove(path)
