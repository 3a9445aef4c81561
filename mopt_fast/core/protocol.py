"""What the module, the optimizer wrapper and the callbacks may ask of a Trainer: one
`typing.Protocol` per caller, so each side of the seam is written down and typed, with names
from core/ and below only (the Trainer, its loops, strategies, metric store and loggers are
described here by the members their callers use). `mopt_fast.Trainer` implements them all
(tests/test_lightning_surface_trainer.py checks it structurally, the type checker statically).

Most members are Lightning's public Trainer attributes under Lightning's names. The others are
mopt_fast's seam, public so that no layer reaches into a private Trainer member: `hooks` (which
hook is running), `metric_store` (where ``self.log`` writes), `precision_plugin` (Lightning's
name), `lightning_optimizers`, `run_backward` and `run_optimizer_step` (the step's path through
the precision plugin), `dump_checkpoint`, and what the learning-rate and batch-size finders ask
(`TuningTrainer`: trial runs of the fit loop, putting the run back).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.optimizer import LightningOptimizer, LRSchedulerConfig
    from mopt_fast.core.states import TrainerState
    from mopt_fast.precision import Precision

__all__ = ["CallbackTrainer", "CheckpointTrainer", "FitLoopState", "HookState", "MetricSink", "MetricsTrainer",
           "ModuleTrainer", "MonitorTrainer", "OptimizerTrainer", "PredictLoopState", "StrategyLike",
           "TrainerProtocol", "TuningTrainer"]


class StrategyLike(Protocol):
    """The members of a strategy (DDP, FSDP2, single device) its callers use."""

    @property
    def world_size(self) -> int: ...

    @property
    def root_device(self) -> torch.device: ...

    @property
    def is_global_zero(self) -> bool: ...

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any: ...

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool: ...  # noqa: A002 (Lightning's)

    def block_grad_sync(self, block: bool) -> contextlib.AbstractContextManager: ...

    def remove_checkpoint(self, filepath: Any) -> None: ...


class HookState(Protocol):
    """Which hook runs now: decides where a logged value goes, and whether it may be logged."""

    current_fx: str | None


class MetricSink(Protocol):
    """Where ``self.log`` writes (the Trainer's metric store)."""

    def log(self, trainer: MetricsTrainer, name: str, value: Any, *, prog_bar: bool, logger: bool | None,
            on_step: bool | None, on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, batch_size: int | None,
            sync_dist: bool = False, metric_attribute: str | None = None, add_dataloader_idx: bool = True,
            sync_dist_group: Any = None) -> None: ...


class PredictLoopState(Protocol):
    """What the prediction writers read of the prediction loop."""

    current_batch_indices: list[int]  # the dataset indices of the batch just predicted
    epoch_batch_indices: list[list[list[int]]]  # per loader, per batch

    @property
    def predictions(self) -> list[Any]: ...


class FitLoopState(Protocol):
    """What callbacks read of the fit loop."""

    batches_that_stepped: int  # the loggers' step
    validation_has_run: bool  # a missing monitor is an error only once validation has run
    # StochasticWeightAveraging's batch-norm epoch: one more epoch, one more batch, no backward.
    max_epochs: int | None
    max_batches: int | float
    skip_backward: bool

    def should_accumulate(self) -> bool:
        """This batch's optimizer step is deferred (gradient accumulation)."""


@runtime_checkable
class MetricsTrainer(Protocol):
    """What the metric store's `log` (``self.log``) reads."""

    state: TrainerState  # no logging outside fit / validate / test
    loggers: list[Any]

    @property
    def root_device(self) -> torch.device:
        """The strategy's (``trainer.strategy.root_device``)."""

    # Read-only (properties) where the Trainer holds a concrete class: a protocol's plain
    # attribute would be invariant, and the concrete class is only structurally a `HookState`.
    @property
    def hooks(self) -> HookState: ...

    @property
    def strategy(self) -> StrategyLike: ...

    @property
    def world_size(self) -> int: ...


@runtime_checkable
class ModuleTrainer(MetricsTrainer, Protocol):
    """What `LightningModule` calls into."""

    optimizers: list[torch.optim.Optimizer]
    lr_scheduler_configs: list[LRSchedulerConfig]
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str | None
    lightning_optimizers: list[LightningOptimizer]  # what `self.optimizers()` returns
    precision_plugin: Precision  # `self.clip_gradients` runs on its fused kernels
    lightning_module: LightningModule | None
    barebones: bool  # `self.log` warns and drops the value

    @property
    def metric_store(self) -> MetricSink:
        """Where `self.log` writes."""

    @property
    def current_epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def global_rank(self) -> int: ...

    @property
    def local_rank(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    @property
    def logger(self) -> Any: ...

    @property
    def progress_bar_callback(self) -> Any: ...

    @property
    def model(self) -> torch.nn.Module | None:
        """What the test / predict model-mode hooks put in eval (and back in train) mode."""

    def call_batch_hook(self, name: str, *args: Any) -> Any:
        """A batch-transfer hook, of the data module or the module as Lightning picks it."""

    def run_backward(self, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """`manual_backward` (and the automatic closure): the backward hooks around the precision
        plugin's scaled backward."""


@runtime_checkable
class OptimizerTrainer(Protocol):
    """What `LightningOptimizer.step` and `toggle_model` call."""

    lightning_module: LightningModule | None

    @property
    def strategy(self) -> StrategyLike:
        """toggle_model: no gradient all-reduce inside (DDP ``no_sync``)."""

    def run_optimizer_step(self, wrapper: LightningOptimizer, closure: Callable[[], Any] | None,
                           **kwargs: Any) -> Any:
        """One step through the precision plugin, with the hooks that run between the closure and
        the update."""


@runtime_checkable
class CallbackTrainer(Protocol):
    """What the built-in callbacks (progress bars, early stopping, the learning-rate monitor, the
    timer, the model summary) read and set: Lightning's public Trainer attributes."""

    state: TrainerState
    loggers: list[Any]
    callbacks: list[Any]
    lightning_module: LightningModule | None
    optimizers: list[torch.optim.Optimizer]
    lr_scheduler_configs: list[LRSchedulerConfig]
    should_stop: bool
    check_val_every_n_epoch: int | None
    val_check_interval: int | float
    log_every_n_steps: int
    max_epochs: int | None
    max_steps: int
    num_sanity_val_steps: int | float
    fast_dev_run: bool | int
    accumulate_grad_batches: int  # GradientAccumulationScheduler sets it at each epoch start

    @property
    def default_root_dir(self) -> str: ...

    @property
    def root_device(self) -> torch.device: ...

    @property
    def strategy(self) -> StrategyLike: ...

    @property
    def fit_loop(self) -> FitLoopState: ...

    @property
    def predict_loop(self) -> PredictLoopState: ...

    @property
    def world_size(self) -> int: ...

    @property
    def global_rank(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    @property
    def current_epoch(self) -> int: ...

    @property
    def global_step(self) -> int: ...

    @property
    def is_last_batch(self) -> bool: ...

    @property
    def sanity_checking(self) -> bool: ...

    @property
    def training(self) -> bool: ...

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]: ...

    @property
    def progress_bar_metrics(self) -> dict[str, float]: ...

    @property
    def progress_bar_callback(self) -> Any: ...

    @property
    def num_training_batches(self) -> int | float: ...

    @property
    def num_val_batches(self) -> list[int | float]: ...

    @property
    def num_sanity_val_batches(self) -> list[int | float]: ...

    @property
    def num_test_batches(self) -> list[int | float]: ...

    @property
    def num_predict_batches(self) -> list[int | float]: ...


@runtime_checkable
class CheckpointTrainer(CallbackTrainer, Protocol):
    """What `ModelCheckpoint` reads to decide when, where and what to save."""

    @property
    def log_dir(self) -> str | None: ...

    @property
    def enable_validation(self) -> bool: ...

    def save_checkpoint(self, filepath: Any, weights_only: bool = False, storage_options: Any | None = None) -> None: ...

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """The checkpoint of the current state (see trainer/resume.py)."""


@runtime_checkable
class MonitorTrainer(CallbackTrainer, Protocol):
    """What the monitoring and averaging callbacks (DeviceStatsMonitor, ThroughputMonitor,
    StochasticWeightAveraging) also use: the loggers' step rule, a direct write to the loggers,
    the running loops' counters and the accumulation they change."""

    accumulate_grad_batches: int
    precision_plugin: Precision  # ThroughputMonitor: the compute dtype

    @property
    def enable_validation(self) -> bool: ...

    @property
    def should_update_logs(self) -> bool:
        """Step metrics go to the loggers now (``log_every_n_steps``, Lightning's rule)."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """`metrics` straight to every logger (and ``logged_metrics``), at `step` (None: the
        loggers' step, with the epoch)."""

    @property
    def evaluation_loop(self) -> Any:
        """The validation or test loop of the running fit / validate / test (its ``batch_progress``), else None."""

    @property
    def predict_loop(self) -> Any: ...


class TuningTrainer(CheckpointTrainer, Protocol):
    """What the learning-rate and batch-size finders (callbacks/lr_finder.py, batch_size_finder.py)
    ask: trial runs of the fit loop (or the validate / test / predict loop) under other settings, and putting the run back afterwards
    (what Lightning's finders do through its Trainer's internals)."""

    accumulate_grad_batches: int
    limit_train_batches: int | float
    limit_val_batches: int | float

    @property
    def datamodule(self) -> Any: ...

    def tuning_trials(self, callbacks: list[Any], **settings: Any) -> contextlib.AbstractContextManager:
        """Inside: trials run with only `callbacks`, the user's loggers swapped for a discarding
        one, and the Trainer `settings` (max_steps, limit_*_batches) set; all put back after."""

    def run_tuning_trial(self) -> None:
        """The fit loop (or validate / test / predict loop) once more, from where it stood when
        `tuning_trials` was entered."""

    def save_tuning_checkpoint(self, path: str) -> None:
        """`save_checkpoint(path)`, also outside a fit (no optimizers then)."""

    def restore_tuning_checkpoint(self, path: str) -> None:
        """The run as saved in `path` (model, optimizers, schedulers, loops, callbacks), its
        loaders asked for again."""

    def reload_dataloaders(self) -> None:
        """Ask for the loaders again (the batch size changed)."""

    def train_dataset_length(self) -> int | None:
        """The length of the train loader's dataset (None: not sized), setting the loader up."""

    def tuning_dataset_length(self) -> int | None:
        """The length of the running loop's data set(s): the train loader's in a fit, else the
        validate / test / predict loaders' (asked for again); None: not sized."""

    def tuning_loader_count(self) -> int:
        """How many loaders the validate / test / predict loop running has (asked for now)."""

    @property
    def tuning_stage_prefix(self) -> str:
        """The dataloader prefix of the loop running: "train", "val", "test" or "predict"."""

    def uses_module_data(self) -> bool:
        """The train data comes from the module or a data module (not loaders given to fit)."""


@runtime_checkable
class TrainerProtocol(ModuleTrainer, OptimizerTrainer, TuningTrainer, MonitorTrainer, Protocol):
    """All of the above."""

