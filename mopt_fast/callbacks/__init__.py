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
from mopt_fast.callbacks.checkpoint import Checkpoint
from mopt_fast.callbacks.device_stats_monitor import DeviceStatsMonitor
from mopt_fast.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason  # noqa: F401
from mopt_fast.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from mopt_fast.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from mopt_fast.callbacks.lambda_function import LambdaCallback
from mopt_fast.callbacks.lr_finder import LearningRateFinder
from mopt_fast.callbacks.lr_monitor import LearningRateMonitor
from mopt_fast.callbacks.model_checkpoint import ModelCheckpoint
from mopt_fast.callbacks.model_summary import ModelSummary
from mopt_fast.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from mopt_fast.callbacks.prediction_writer import BasePredictionWriter
from mopt_fast.callbacks.progress import (  # noqa: F401
    ProgressBar,
    RichProgressBar,
    RichProgressBarTheme,
    TQDMProgressBar,
)
from mopt_fast.callbacks.pruning import ModelPruning
from mopt_fast.callbacks.rich_model_summary import RichModelSummary
from mopt_fast.callbacks.spike import SpikeDetection
from mopt_fast.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from mopt_fast.callbacks.throughput_monitor import ThroughputMonitor
from mopt_fast.callbacks.timer import Timer
from mopt_fast.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging
from mopt_fast.exceptions import not_built

# Lightning's callback names (EarlyStoppingReason and RichProgressBarTheme import from here too).
__all__ = [
    "Callback", "EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "ProgressBar",
    "RichProgressBar", "TQDMProgressBar", "Timer",
    "BackboneFinetuning", "BaseFinetuning", "BasePredictionWriter", "Checkpoint", "GradientAccumulationScheduler",
    "LambdaCallback", "OnExceptionCheckpoint", "RichModelSummary",
    "DeviceStatsMonitor", "EMAWeightAveraging", "ModelPruning", "SpikeDetection", "StochasticWeightAveraging",
    "ThroughputMonitor", "WeightAveraging", "BatchSizeFinder", "LearningRateFinder",
]

# The callbacks lightning.pytorch.callbacks exports that mopt_fast does not build.
_NOT_BUILT: tuple[str, ...] = ()


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise not_built(f"lightning.pytorch.callbacks.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
