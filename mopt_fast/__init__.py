"""mopt_fast: fused multi-tensor kernels for the work around optimizer.step().

Layers, bottom up: kernels (csrc/, triton_kernels/, mopt_fast/torch_ops) → op registry
(mopt_fast.registry) → functional API (mopt_fast.functional, re-exported here) → precision
plugins and the optimizer wrapper (mopt_fast.precision, mopt_fast.optimizer) → LightningModule
(mopt_fast.module) → Trainer (mopt_fast.trainer).
"""
from typing import Any

from mopt_fast import _extension
from mopt_fast._version import __version__
from mopt_fast.datamodule import LightningDataModule
from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.functional import (
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
    scale_grads_,
    unscale_clip_grad_norm_,
    unscale_grads_,
    zero_grad_,
)
from mopt_fast.module import LightningModule
from mopt_fast.optimizer import LightningOptimizer
from mopt_fast.registry import available_backends, backend_for, use_backend
from mopt_fast.seed import seed_everything
from mopt_fast.trainer import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichProgressBar,
    TensorBoardLogger,
    TQDMProgressBar,
    Trainer,
)
from mopt_fast.trainer.strategies import DDPStrategy, FSDPStrategy

if _extension.COMPILED:
    from mopt_fast import _ops

    _ops.register_fakes("mopt_fast")


# Names of the lightning.pytorch / lightning top level that mopt_fast does not build.
_NOT_BUILT = {
    "Fabric": "lightning.fabric.Fabric",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise not_built(_NOT_BUILT[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_info() -> dict:
    """How this install was built, and why a compiled backend is missing, if one is."""
    return {
        "version": __version__,
        "compiled": _extension.COMPILED,
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
    "scale_grads_",
    "seed_everything",
    "unscale_clip_grad_norm_",
    "unscale_grads_",
    "use_backend",
    "zero_grad_",
]
