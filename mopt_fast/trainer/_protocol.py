"""What the module, the optimizer wrapper, the metric store, the checkpoint callback and the
strategies may ask of the Trainer: one `typing.Protocol` per caller, so each side of the seam is
written down and typed. `Trainer` implements them all (tests/test_lightning_surface_trainer.py
checks it structurally); nothing else in mopt_fast reaches into the Trainer.

The underscored members are internal to mopt_fast (a user's module never needs them); the others
are Lightning's public Trainer attributes under Lightning's names.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from mopt_fast.module import LightningModule
    from mopt_fast.optimizer import LightningOptimizer
    from mopt_fast.precision import Precision
    from mopt_fast.trainer._configure import LRSchedulerConfig
    from mopt_fast.trainer._metrics import MetricStore
    from mopt_fast.trainer.loggers import Logger
    from mopt_fast.trainer.states import TrainerState
    from mopt_fast.trainer.strategies import Strategy

__all__ = ["CheckpointTrainer", "MetricsTrainer", "ModuleTrainer", "OptimizerTrainer", "StrategyTrainer",
           "TrainerProtocol"]


@runtime_checkable
class MetricsTrainer(Protocol):
    """What `MetricStore.log` (``self.log``) reads."""

    _current_fx: str | None  # the hook running now: decides where a logged value goes
    state: TrainerState  # no logging outside fit / validate / test
    root_device: torch.device
    strategy: Strategy
    loggers: list[Logger]

    @property
    def world_size(self) -> int: ...


@runtime_checkable
class ModuleTrainer(MetricsTrainer, Protocol):
    """What `LightningModule` calls into."""

    optimizers: list[torch.optim.Optimizer]
    lr_scheduler_configs: list[LRSchedulerConfig]
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str | None
    _lightning_optimizers: list[LightningOptimizer]  # what `self.optimizers()` returns
    _precision: Precision  # `self.clip_gradients` runs on its fused kernels
    _metrics: MetricStore  # `self.log` writes here

    @property
    def current_epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    def _backward(self, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """`manual_backward` (and the automatic closure): the backward hooks around the precision
        plugin's scaled backward."""


@runtime_checkable
class OptimizerTrainer(Protocol):
    """What `LightningOptimizer.step` and `toggle_model` call."""

    @property
    def lightning_module(self) -> LightningModule | None: ...

    def _optimizer_step(self, wrapper: LightningOptimizer, closure: Callable[[], Any] | None, **kwargs: Any) -> Any:
        """One step through the precision plugin, with the hooks that run between the closure and
        the update."""

    def _block_grad_sync(self, block: bool) -> contextlib.AbstractContextManager:
        """No gradient all-reduce inside (DDP ``no_sync``) when `block`."""


@runtime_checkable
class CheckpointTrainer(Protocol):
    """What `ModelCheckpoint` reads to decide when, where and what to save."""

    default_root_dir: str
    loggers: list[Logger]
    check_val_every_n_epoch: int | None
    val_check_interval: int | float
    strategy: Strategy
    _validation_has_run: bool  # a missing monitor is an error only once validation has run

    @property
    def log_dir(self) -> str | None: ...

    @property
    def sanity_checking(self) -> bool: ...

    @property
    def enable_validation(self) -> bool: ...

    @property
    def is_global_zero(self) -> bool: ...

    @property
    def current_epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def callback_metrics(self) -> Mapping[str, torch.Tensor]: ...

    def _checkpoint_dict(self, weights_only: bool = False) -> dict[str, Any]:
        """The checkpoint of the current state (see resume.py)."""


@runtime_checkable
class StrategyTrainer(Protocol):
    """What a strategy's `setup_environment` reads."""

    _accelerator: str  # "cpu" or "cuda": picks the process group backend


@runtime_checkable
class TrainerProtocol(ModuleTrainer, OptimizerTrainer, CheckpointTrainer, StrategyTrainer, Protocol):
    """All of the above."""
