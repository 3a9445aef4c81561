"""``mopt_fast.callbacks``: the callbacks under the import path of ``lightning.pytorch.callbacks``.

A script that does ``from lightning.pytorch.callbacks import ModelCheckpoint`` runs with
``from mopt_fast.callbacks import ModelCheckpoint``. The callbacks live in mopt_fast.trainer;
a Lightning callback mopt_fast does not build raises `mopt_fast.exceptions.NotBuiltError` (an
ImportError and a NotImplementedError) naming it, on import or attribute access.
"""
from __future__ import annotations

from typing import Any

from mopt_fast import trainer as _trainer
from mopt_fast.exceptions import not_built
from mopt_fast.trainer import callbacks as _callbacks
from mopt_fast.trainer import checkpoint as _checkpoint
from mopt_fast.trainer.callbacks import Callback, ModelSummary, TQDMProgressBar
from mopt_fast.trainer.checkpoint import ModelCheckpoint

# Every callback lightning.pytorch.callbacks exports.
_LIGHTNING_CALLBACKS = (
    "BackboneFinetuning", "BaseFinetuning", "BasePredictionWriter", "BatchSizeFinder", "Callback", "Checkpoint",
    "DeviceStatsMonitor", "EarlyStopping", "GradientAccumulationScheduler", "LambdaCallback", "LearningRateFinder",
    "LearningRateMonitor", "ModelCheckpoint", "ModelPruning", "ModelSummary", "OnExceptionCheckpoint",
    "ProgressBar", "RichModelSummary", "RichProgressBar", "StochasticWeightAveraging", "SpikeDetection",
    "ThroughputMonitor", "Timer", "TQDMProgressBar", "EMAWeightAveraging", "WeightAveraging",
)


def _built() -> dict[str, Any]:
    """The Lightning callback names mopt_fast has, looked up where they live: the four above, and
    those mopt_fast.trainer exports (EarlyStopping, LearningRateMonitor, RichProgressBar, Timer,
    ...) show up here without an edit."""
    found = {}
    for name in _LIGHTNING_CALLBACKS:
        for module in (_trainer, _callbacks, _checkpoint):
            obj = getattr(module, name, None)
            if isinstance(obj, type):
                found[name] = obj
                break
    return found


__all__ = ["Callback", "ModelCheckpoint", "ModelSummary", "TQDMProgressBar"]
_more = {name: obj for name, obj in _built().items() if name not in __all__}
globals().update(_more)
__all__ += sorted(_more)


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_CALLBACKS:
        raise not_built(f"lightning.pytorch.callbacks.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
