"""mopt_fast: fused multi-tensor kernels for the work around optimizer.step().

Layers, bottom up: kernels (csrc/, triton_kernels/, mopt_fast/torch_ops) → op registry
(mopt_fast.registry) → functional API (mopt_fast.functional, re-exported here) → precision
plugins (mopt_fast.precision) → core (mopt_fast.core: LightningModule, LightningDataModule, the
optimizer wrapper) → callbacks and loggers (mopt_fast.callbacks, mopt_fast.loggers) → the Trainer
engine (mopt_fast.trainer) → the command line (mopt_fast.cli: LightningCLI, on the optional jsonargparse).

``import mopt_fast`` loads the kernels and the functional API only; the Lightning front (the
names below from core/ up, and ``mopt_fast.callbacks`` / ``loggers`` / ``trainer``) loads on first
use, so a kernels-only user pays for neither it nor torch.distributed.
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from mopt_fast import _extension
from mopt_fast._version import __version__
from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.functional import (
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
    grad_norm,
    group_grad_norms,
    scale_grads_,
    unscale_clip_grad_norm_,
    unscale_grads_,
    zero_grad_,
)
from mopt_fast.registry import available_backends, backend_for, use_backend
from mopt_fast.seed import seed_everything
from mopt_fast.step_guard import StepGuard

if TYPE_CHECKING:
    from mopt_fast.callbacks import (
        Callback,
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        ModelSummary,
        ProgressBar,
        RichProgressBar,
        TQDMProgressBar,
    )
    from mopt_fast.core import LightningDataModule, LightningModule, LightningOptimizer
    from mopt_fast.loggers import CSVLogger, TensorBoardLogger
    from mopt_fast.trainer import Trainer
    from mopt_fast.trainer.strategies import DDPStrategy, FSDPStrategy

# Lightning's console set-up for its package loggers: INFO lines ("Seed set to 0", ...) go to stderr
# unless the application configured logging itself (then they propagate to its handlers).
_logger = logging.getLogger(__name__)
_logger.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False

if _extension.COMPILED:
    from mopt_fast import _ops

    _ops.register_fakes("mopt_fast")

# The Lightning front, loaded on first access: name -> the module that defines it.
_FRONT = {
    "LightningDataModule": "mopt_fast.core.datamodule",
    "LightningModule": "mopt_fast.core.module",
    "LightningOptimizer": "mopt_fast.core.optimizer",
    "Callback": "mopt_fast.callbacks.callback",
    "EarlyStopping": "mopt_fast.callbacks.early_stopping",
    "LearningRateMonitor": "mopt_fast.callbacks.lr_monitor",
    "ModelCheckpoint": "mopt_fast.callbacks.model_checkpoint",
    "ModelSummary": "mopt_fast.callbacks.model_summary",
    "ProgressBar": "mopt_fast.callbacks.progress.progress_bar",
    "RichProgressBar": "mopt_fast.callbacks.progress.rich_progress",
    "TQDMProgressBar": "mopt_fast.callbacks.progress.tqdm_progress",
    "CSVLogger": "mopt_fast.loggers.csv_logs",
    "TensorBoardLogger": "mopt_fast.loggers.tensorboard",
    "Trainer": "mopt_fast.trainer.trainer",
    "DDPStrategy": "mopt_fast.trainer.strategies",
    "FSDPStrategy": "mopt_fast.trainer.strategies",
}
_SUBPACKAGES = ("amp", "callbacks", "core", "loggers", "plugins", "trainer", "utilities")

# Names of the lightning.pytorch / lightning top level that mopt_fast does not build.
_NOT_BUILT = {
    "Fabric": "lightning.fabric.Fabric",
}


def __getattr__(name: str) -> Any:
    if name in _FRONT:
        value = getattr(importlib.import_module(_FRONT[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NOT_BUILT:
        raise not_built(_NOT_BUILT[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FRONT) | set(_SUBPACKAGES))


def build_info() -> dict:
    """How this install was built, and why a compiled backend is missing, if one is."""
    return {
        "version": __version__,
        "compiled": _extension.COMPILED,
        # "ahead-of-time" (pip install --no-build-isolation), "jit" (compiled on first import), None
        "build": _extension.BUILD,
        "build_dir": _extension.BUILD_DIR,
        "cpu_isa": _extension.CPU_ISA,
        "with_cuda": _extension.WITH_CUDA,
        "reason": _extension.REASON or None,
        "available_backends": available_backends(),
    }


__all__ = [
    "CSVLogger",
    "Callback",
    "DDPStrategy",
    "EarlyStopping",
    "FSDPStrategy",
    "LearningRateMonitor",
    "LightningDataModule",
    "LightningModule",
    "LightningOptimizer",
    "MisconfigurationException",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "RichProgressBar",
    "TQDMProgressBar",
    "TensorBoardLogger",
    "Trainer",
    "available_backends",
    "backend_for",
    "build_info",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "grad_norm",
    "group_grad_norms",
    "scale_grads_",
    "seed_everything",
    "StepGuard",
    "unscale_clip_grad_norm_",
    "unscale_grads_",
    "use_backend",
    "zero_grad_",
]
