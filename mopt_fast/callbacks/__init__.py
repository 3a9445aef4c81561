"""``mopt_fast.callbacks``: the callbacks, under the import path of ``lightning.pytorch.callbacks``.

One file per callback. A script that does ``from lightning.pytorch.callbacks import
ModelCheckpoint`` runs with ``from mopt_fast.callbacks import ModelCheckpoint``; a Lightning
callback mopt_fast does not build raises `mopt_fast.exceptions.NotBuiltError` (an ImportError and
a NotImplementedError) naming it, on import or attribute access.
"""
from __future__ import annotations

from typing import Any

from mopt_fast.callbacks.batch_size_finder import BatchSizeFinder
from mopt_fast.callbacks.callback import Callback
from mopt_fast.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason  # noqa: F401
from mopt_fast.callbacks.lr_finder import LearningRateFinder
from mopt_fast.callbacks.lr_monitor import LearningRateMonitor
from mopt_fast.callbacks.model_checkpoint import ModelCheckpoint
from mopt_fast.callbacks.model_summary import ModelSummary
from mopt_fast.callbacks.progress import (  # noqa: F401
    ProgressBar,
    RichProgressBar,
    RichProgressBarTheme,
    TQDMProgressBar,
)
from mopt_fast.callbacks.timer import Timer
from mopt_fast.exceptions import not_built

# Lightning's callback names (EarlyStoppingReason and RichProgressBarTheme import from here too).
__all__ = [
    "BatchSizeFinder", "Callback", "EarlyStopping", "LearningRateFinder", "LearningRateMonitor", "ModelCheckpoint",
    "ModelSummary", "ProgressBar", "RichProgressBar", "TQDMProgressBar", "Timer",
]

# The callbacks lightning.pytorch.callbacks exports that mopt_fast does not build.
_NOT_BUILT = (
    "BackboneFinetuning", "BaseFinetuning", "BasePredictionWriter", "Checkpoint",
    "DeviceStatsMonitor", "EMAWeightAveraging", "GradientAccumulationScheduler", "LambdaCallback",
    "ModelPruning", "OnExceptionCheckpoint", "RichModelSummary", "SpikeDetection",
    "StochasticWeightAveraging", "ThroughputMonitor", "WeightAveraging",
)


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise not_built(f"lightning.pytorch.callbacks.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
