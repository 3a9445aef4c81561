"""mopt_fast.Trainer: Lightning 2.6's Trainer, lean, on the fused kernels.

The Trainer holds the configuration (each argument checked in _args.py and kept by what owns
it), the state (`trainer.state`: which entry point and loop are running, core/states.py), the
hooks (`trainer.hooks`, _hooks.py), and the entry points. The loops live in their own files, each
one Lightning's counterpart with less indirection, each owning and serializing its own state:

- fit_loop.py: epochs, batches, scheduler steps, validation checks, logging, checkpoint points;
- training_step.py: one batch's training_step and its optimization (automatic or manual);
- evaluation_loop.py: validation inside fit (and the sanity check), validate, test, predict;
- resume.py: what a checkpoint holds, and restoring one;
- _lightning_surface.py: what Lightning's own callbacks read of a Trainer and its loops (progress
  counters, the logger connector, the accelerator), for the user's Lightning callbacks.
- _profiling.py: ``Trainer(profiler=...)``: the profiled hook runner and loop wrappers a run takes
  on only when its profiler records (mopt_fast/profilers/ holds the profilers).

It is leaner per step than Lightning's: hooks nobody overrides are not called, logged values stay
on the device until a logger or the progress bar reads them, and the optimizer work runs on
mopt_fast's kernels. Distributed training runs on torch.distributed's DDP or FSDP2
(strategies.py). What other parts of mopt_fast may ask of the Trainer is written down in
core/protocol.py; only this file touches the Trainer's private members.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import threading
import types
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch

from mopt_fast.callbacks._tuning import DummyLogger
from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.callbacks.checkpoint import Checkpoint
from mopt_fast.callbacks.early_stopping import EarlyStopping
from mopt_fast.callbacks.progress.progress_bar import ProgressBar
from mopt_fast.callbacks.timer import Timer
from mopt_fast.core.datamodule import LightningDataModule, datamodule_base, is_datamodule
from mopt_fast.core.hparams import clean_namespace
from mopt_fast.core.module import LightningModule
from mopt_fast.core.optimizer import LightningOptimizer, LRSchedulerConfig, configure_optimizers, validate_clip_args
from mopt_fast.core.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from mopt_fast.exceptions import (
    MisconfigurationException,
    PossibleUserWarning,
    SIGTERMException,
    _TunerExitException,
    not_built,
)
from mopt_fast.loggers.logger import Logger
from mopt_fast.precision import Precision
from mopt_fast.profilers import Profiler
from mopt_fast.trainer import _args, _model_setup, _signals, resume, training_step
from mopt_fast.trainer._data import batch_hook_owner, batch_transfer, isolated_rng, shut_down_workers
from mopt_fast.trainer._hooks import HookRunner, is_overridden, is_param_in_hook_signature
from mopt_fast.trainer._lightning_surface import (
    Accelerator,
    LoggerConnector,
    callback_base,
    install_is_overridden_fallback,
    is_lightning_callback,
    kind_of,
    lightning_precision_view,
)
from mopt_fast.trainer._logging import log_hyperparams_at_start, start_experiments
from mopt_fast.trainer._metrics import MetricStore
from mopt_fast.trainer._plugins import parse_plugins
from mopt_fast.trainer._profiling import active_profiler, hook_runner, make_profiler
from mopt_fast.trainer._warn import warn
from mopt_fast.trainer.evaluation_loop import EvaluationLoop, PredictionLoop, results_to_scalars
from mopt_fast.trainer.fit_loop import FitLoop
from mopt_fast.trainer.strategies import FSDPStrategy, Strategy, make_strategy

__all__ = ["Trainer"]

class _MultipleOptimizersError(MisconfigurationException, RuntimeError):
    """Lightning raises a RuntimeError here; mopt_fast's MisconfigurationException (a ValueError)
    before: both catch it."""


def _stage_flag(stage: RunningStage) -> property:
    """A Trainer flag (``trainer.training`` and its siblings): whether `stage` is the one running;
    setting it True enters the stage, False leaves it if it is the one running (Lightning's)."""

    def get(self: Trainer) -> bool:
        return self.state.stage is stage

    def set_(self: Trainer, value: bool) -> None:
        self._set_stage(stage, value)

    return property(get, set_)


class Trainer:
    """Fits a `mopt_fast.LightningModule`; the arguments are Lightning's (keyword-only).

    Args:
        accelerator: "cpu", "cuda" (or "gpu"), or "auto" (CUDA when available).
        strategy: "auto", "ddp", "ddp_find_unused_parameters_true", "fsdp" (FSDP2), or a
            `DDPStrategy` / `FSDPStrategy`.
        devices: processes per node: "auto" (1), an int, or a list of CUDA device indices.
        num_nodes: nodes (each started by torchrun).
        precision: "32-true" / "32", "16-mixed" (CUDA; on the CPU it falls back to bf16-mixed with
            a warning, as Lightning), "bf16-mixed"; "16-true", "bf16-true", "64-true": the module's
            parameters and the batches' floating-point tensors in that dtype.
        logger: True (under `default_root_dir`: a TensorBoardLogger when tensorboard is installed, else a
            CSVLogger, as Lightning), False, a logger or a list of them.
        callbacks: a Callback or a list of them.
        max_epochs / max_steps: stop after either; both unset means 1000 epochs (as Lightning).
        limit_train_batches / limit_val_batches: an int (batches) or a float (fraction).
        val_check_interval: validate every N batches (int) or every fraction of an epoch (float).
        check_val_every_n_epoch: validate every N epochs (None: count batches across epochs).
        num_sanity_val_steps: validation batches run before training (results discarded).
        log_every_n_steps: how often step metrics go to the loggers.
        enable_checkpointing: add a ModelCheckpoint (one checkpoint per epoch, the newest kept)
            unless the callbacks have one; False: none (and a ModelCheckpoint given is an error).
        enable_progress_bar / enable_model_summary: the tqdm bar and the summary table.
        accumulate_grad_batches: automatic optimization only: step every N batches, loss / N.
        gradient_clip_val / gradient_clip_algorithm: automatic optimization only ("norm"/"value").
        default_root_dir: where the loggers write (default: the working directory; "~" expanded).
        barebones: measure the Trainer's own overhead: checkpointing, logging (``self.log`` too),
            the progress bar, the model summary and the sanity check off (Lightning's ValueError if
            one of them, fast_dev_run, detect_anomaly or a profiler is asked for).

    Every argument not passed is read from a ``PL_TRAINER_<ARGUMENT>`` environment variable when set
    (``PL_TRAINER_MAX_EPOCHS=3``), as Lightning's Trainer does.
    """

    # Set in __init__, from the arguments (_args.py checks them):
    _accelerator: str
    _device_index: int | None
    num_nodes: int
    num_devices: int
    strategy: Strategy
    precision: str
    precision_plugin: Precision
    barebones: bool
    accumulate_grad_batches: int
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str | None
    max_epochs: int | None
    max_steps: int
    min_epochs: int
    min_steps: int | None
    overfit_batches: int | float
    detect_anomaly: bool
    sync_batchnorm: bool
    use_distributed_sampler: bool
    enable_autolog_hparams: bool
    reload_dataloaders_every_n_epochs: int
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    inference_mode: bool
    fast_dev_run: bool | int
    val_check_interval: int | float
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int | float
    log_every_n_steps: int
    _default_root_dir: str
    _loggers: list[Logger]
    callbacks: list[Any]

    @_args.defaults_from_env_vars
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str | Strategy = "auto",
        devices: Sequence[int] | str | int = "auto",  # this order: the CLI parses "1" to "1", as Lightning's
        num_nodes: int = 1,
        precision: int | str | None = None,  # int first: the CLI parses "32" to 32, as Lightning's
        logger: bool | Logger | Iterable[Logger] | None = None,
        callbacks: Callback | list[Callback] | None = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: str | timedelta | dict[str, int] | None = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | str | timedelta | dict[str, int] | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Profiler | str | None = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: str | os.PathLike | None = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
    ) -> None:
        self.barebones = bool(barebones)
        if barebones:  # switches the opt-outs off (Lightning's checks, first in its __init__ too)
            off = _args.barebones_args({
                "enable_checkpointing": enable_checkpointing, "logger": logger,
                "enable_progress_bar": enable_progress_bar, "log_every_n_steps": log_every_n_steps,
                "enable_model_summary": enable_model_summary, "num_sanity_val_steps": num_sanity_val_steps,
                "fast_dev_run": fast_dev_run, "detect_anomaly": detect_anomaly, "profiler": profiler})
            enable_checkpointing, logger = off["enable_checkpointing"], off["logger"]
            enable_progress_bar, log_every_n_steps = off["enable_progress_bar"], off["log_every_n_steps"]
            enable_model_summary, num_sanity_val_steps = off["enable_model_summary"], off["num_sanity_val_steps"]
        _args.check_unsupported(reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs,
                                model_registry=model_registry)
        _args.set_torch_flags(deterministic, benchmark)
        self.num_nodes = _args.check_num_nodes(num_nodes)
        self._accelerator, self.num_devices, self._device_index = _args.parse_devices(accelerator, devices)
        self.strategy = make_strategy(strategy, self.num_devices, self.num_nodes)
        self.strategy.connect_trainer(self, self._accelerator, self._device_index)
        given = parse_plugins(plugins, precision, sync_batchnorm, self._accelerator)
        self.precision_plugin = given.precision or _args.precision_plugin(precision, self._accelerator)
        self.precision = self.precision_plugin.name
        sync_batchnorm = given.sync_batchnorm
        if given.checkpoint_io is not None:
            self.strategy.checkpoint_io = given.checkpoint_io
        self.accumulate_grad_batches = _args.check_accumulate(accumulate_grad_batches)
        self.max_epochs, self.max_steps = _args.check_max_limits(max_epochs, max_steps)
        self.min_epochs, self.min_steps = _args.check_min_limits(min_epochs, min_steps)
        _, self.gradient_clip_algorithm = validate_clip_args(gradient_clip_val, gradient_clip_algorithm)
        self.gradient_clip_val = gradient_clip_val  # as given (Lightning compares it with clip_gradients')
        self.inference_mode = bool(inference_mode)
        self.detect_anomaly = bool(detect_anomaly)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.use_distributed_sampler = bool(use_distributed_sampler)
        self.enable_autolog_hparams = bool(enable_autolog_hparams)
        self.reload_dataloaders_every_n_epochs = reload_dataloaders_every_n_epochs
        # In Lightning's order (its callback connector, data connector, then the INFO lines, then the
        # debugging flags), so that the messages come in the same order.
        self._default_root_dir = os.fspath(default_root_dir) if default_root_dir else os.getcwd()
        self.callbacks = _args.callbacks_list(callbacks, self.strategy, enable_progress_bar, enable_model_summary,
                                              enable_checkpointing, max_time)
        self.check_val_every_n_epoch = _args.check_val_every_n_epoch_arg(check_val_every_n_epoch, val_check_interval)
        if detect_anomaly:
            _args.info("You have turned on `Trainer(detect_anomaly=True)`. This will significantly slow down compute "
                       "speed and is recommended only for model debugging.")
        _args.log_device_info(self._accelerator)
        flags = _args.debugging_flags(fast_dev_run, overfit_batches, limit_train_batches, limit_val_batches,
                                      limit_test_batches, limit_predict_batches, val_check_interval,
                                      num_sanity_val_steps)
        self.fast_dev_run = flags.fast_dev_run
        self.overfit_batches = flags.overfit_batches
        self.limit_train_batches, self.limit_val_batches = flags.limit_train_batches, flags.limit_val_batches
        self.limit_test_batches, self.limit_predict_batches = flags.limit_test_batches, flags.limit_predict_batches
        self.num_sanity_val_steps = flags.num_sanity_val_steps
        self.val_check_interval = flags.val_check_interval
        if flags.fast_dev_run:
            assert flags.max_steps is not None  # fast_dev_run sets the limits
            self.max_steps, self.max_epochs = flags.max_steps, flags.max_epochs
            self.check_val_every_n_epoch = flags.check_val_every_n_epoch
        self.log_every_n_steps = _args.check_log_every_n_steps(log_every_n_steps)
        self.loggers = _args.loggers(logger, self.default_root_dir, self.fast_dev_run)
        self.profiler: Profiler = make_profiler(profiler)  # a PassThroughProfiler when none, as Lightning
        self.state = TrainerState()
        self.metric_store = MetricStore()
        self.lightning_module: LightningModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self.before_update: dict[int, Callable[[], None] | None] = {}
        self.run_backward = types.MethodType(training_step.backward, self)
        self.run_optimizer_step = types.MethodType(training_step.optimizer_step, self)
        self.hooks = HookRunner(self)  # the hook table of the run, and which hook is running
        self.batch_transfer: Callable[[Any, int], Any] | None = None  # None: no batch-transfer hook overridden
        self.fit_loop = FitLoop(self)
        self.fit_loop.val_check_time_interval = flags.val_check_time_interval
        self.val_loop = EvaluationLoop(self, TrainerFn.FITTING, RunningStage.VALIDATING, verbose=False,
                                       inference_mode=False)
        self.validate_loop = EvaluationLoop(self, TrainerFn.VALIDATING, RunningStage.VALIDATING,
                                            inference_mode=self.inference_mode)
        self.test_loop = EvaluationLoop(self, TrainerFn.TESTING, RunningStage.TESTING,
                                        inference_mode=self.inference_mode)
        self.predict_loop = PredictionLoop(self, inference_mode=self.inference_mode)
        self.datamodule: LightningDataModule | None = None
        self._ckpt_path: str | None = None
        self._ckpt_path_user_managed = False
        self._ckpt_weights_only: bool | None = None  # the entry point's weights_only, for its ckpt_path
        self._tuning_loop_state: dict[str, Any] = {}  # the fit loop's position when a finder's trials began
        self.should_stop = False
        self._preemption = _signals.PreemptionSignals()  # SIGTERM / SIGUSR1 handlers, installed during fit

    # -- pickling (a Trainer pickles, as Lightning's) -------------------------------------------------
    # The per-step callables bound in __init__ / _setup_optimizers (bound functions and closures
    # keyed by the optimizers' ids) and the run's batch-transfer closure do not pickle: they are left
    # out and made again (the transfer closure by the next entry point's _run).
    _UNPICKLED = ("run_backward", "run_optimizer_step", "before_update", "batch_transfer")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.batch_transfer = None
        self.run_backward = types.MethodType(training_step.backward, self)
        self.run_optimizer_step = types.MethodType(training_step.optimizer_step, self)
        self.before_update = (
            {id(o): training_step.make_before_update(self, o) for o in self.optimizers}
            if self.lightning_module is not None else {}
        )

    # -- state -------------------------------------------------------------------------------------
    def _set_stage(self, stage: RunningStage, on: bool) -> None:
        if on:
            self.state.stage = stage
        elif self.state.stage is stage:
            self.state.stage = None

    training = _stage_flag(RunningStage.TRAINING)
    validating = _stage_flag(RunningStage.VALIDATING)
    sanity_checking = _stage_flag(RunningStage.SANITY_CHECKING)
    testing = _stage_flag(RunningStage.TESTING)
    predicting = _stage_flag(RunningStage.PREDICTING)

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    # -- preemption (SIGTERM / SIGUSR1 during fit, collective timeouts: _signals.py) ------------------
    @property
    def received_sigterm(self) -> bool:
        """Whether SIGTERM (or SIGUSR1) arrived during the current or last fit (Lightning's; its
        counts SIGTERM only)."""
        return self._preemption.received is not None

    def preemption_check(self) -> _signals.PreemptionCheck:
        """What the fit loop calls after each batch: the preemption signal to stop for, 0 for none
        (one process: the handler's record; a distributed fit: the ranks' vote)."""
        distributed = self.strategy.is_distributed and self.world_size > 1
        return _signals.PreemptionCheck(self._preemption, distributed)

    def _explain_failure(self, exc: BaseException) -> BaseException:
        """A collective that timed out, as an error naming it and the ranks that did not join."""
        timeout = getattr(self.strategy, "timeout", None)
        if not self.strategy.is_distributed or timeout is None:
            return exc
        clearer = _signals.explain_timeout(exc, self.global_rank, self.world_size, timeout)
        if clearer is None:
            return exc
        clearer.__cause__ = exc
        return clearer

    # -- the fit loop's counters ----------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Optimizer steps taken: every wrapper step of every optimizer in manual optimization."""
        return self.fit_loop.global_step

    @property
    def current_epoch(self) -> int:
        return self.fit_loop.epochs_completed

    @property
    def batch_idx(self) -> int:
        return self.fit_loop.batch_idx

    @property
    def is_last_batch(self) -> bool:
        return self.fit_loop.is_last_batch

    @property
    def num_training_batches(self) -> int | float:
        return self.fit_loop.num_training_batches

    @property
    def val_check_batch(self) -> int | float | None:  # None: validation by time
        return self.fit_loop.val_check_batch

    @property
    def enable_validation(self) -> bool:
        """fit validates: a validation loader is given or defined, `validation_step` is, and
        limit_val_batches > 0."""
        model = self.lightning_module
        return (
            model is not None and self.limit_val_batches > 0 and self.val_loop.source.is_defined()
            and is_overridden("validation_step", model, LightningModule)
        )

    # -- the dataloaders and their batch counts --------------------------------------------------------
    @property
    def num_val_batches(self) -> list[int | float]:
        if self.state.fn == TrainerFn.VALIDATING:
            return list(self.validate_loop.max_batches)
        return list(self.val_loop.max_batches)

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        return [min(self.num_sanity_val_steps, n) for n in self.num_val_batches]

    @property
    def num_test_batches(self) -> list[int | float]:
        return list(self.test_loop.max_batches)

    @property
    def num_predict_batches(self) -> list[int | float]:
        return list(self.predict_loop.max_batches)

    @staticmethod
    def _loaders(loaders: list[Any] | None) -> Any:
        if not loaders:
            return None
        return loaders[0] if len(loaders) == 1 else list(loaders)

    @property
    def train_dataloader(self) -> Any:
        return self.fit_loop.dataloaders

    @property
    def val_dataloaders(self) -> Any:
        loop = self.validate_loop if self.state.fn == TrainerFn.VALIDATING else self.val_loop
        return self._loaders(loop.loaders)

    @property
    def test_dataloaders(self) -> Any:
        return self._loaders(self.test_loop.loaders)

    @property
    def predict_dataloaders(self) -> Any:
        return self._loaders(self.predict_loop.loaders)

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint the last fit/validate/test/predict loaded (None: none). Set it to have the
        next call load that one (until set back to None)."""
        return self._ckpt_path

    @ckpt_path.setter
    def ckpt_path(self, path: str | os.PathLike | None) -> None:
        self._ckpt_path = os.fspath(path) if path is not None else None
        self._ckpt_path_user_managed = bool(path)

    # -- what users read -------------------------------------------------------------------------
    @property
    def default_root_dir(self) -> str:
        """Where loggers and checkpoints write by default: a local path with ``~`` expanded and
        normalized (Lightning's), a remote URL ("s3://...") as given."""
        return _args.expand_local_path(self._default_root_dir)

    @property
    def model(self) -> LightningModule | None:
        return self.lightning_module

    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Logger | None) -> None:
        """Lightning's: a falsy value leaves no logger, anything else is the only one."""
        self.loggers = [logger] if logger else []

    @property
    def loggers(self) -> list[Logger]:
        return self._loggers

    @loggers.setter
    def loggers(self, loggers: list[Logger] | None) -> None:
        self._loggers = loggers if loggers else []

    @property
    def log_dir(self) -> str | None:
        """The first logger's log_dir when it is a TensorBoard or CSV logger (ours or Lightning's), else
        its save_dir (W&B, MLflow, ...); the default root folder without a logger (Lightning's)."""
        if not self.loggers:
            return self.default_root_dir
        first = self.loggers[0]
        if any(cls.__name__ in ("CSVLogger", "TensorBoardLogger")
               and cls.__module__.startswith(("mopt_fast.", "lightning.", "pytorch_lightning."))
               for cls in type(first).__mro__):
            return first.log_dir
        return first.save_dir

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self.metric_store.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self.metric_store.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self.metric_store.progress_bar_metrics

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.precision_plugin.scaler

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.global_rank == 0

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """The checkpoint callbacks (subclasses of mopt_fast's or Lightning's `Checkpoint`)."""
        kinds = kind_of(Checkpoint, "Checkpoint")
        return [c for c in self.callbacks if isinstance(c, kinds)]

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Any:
        kinds = kind_of(ProgressBar, "ProgressBar")
        return next((c for c in self.callbacks if isinstance(c, kinds)), None)

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        kinds = kind_of(EarlyStopping, "EarlyStopping")
        return [c for c in self.callbacks if isinstance(c, kinds)]

    @property
    def early_stopping_callback(self) -> Any:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    # -- Lightning's surface for callbacks (Lightning's own and third-party ones read these) -------
    @property
    def root_device(self) -> torch.device:
        """The device of this process (``trainer.strategy.root_device``)."""
        return self.strategy.root_device

    @property
    def accelerator(self) -> Accelerator:
        """What Lightning's callbacks ask of Lightning's accelerator (`get_device_stats`)."""
        return Accelerator.of(self._accelerator)

    @property
    def device_ids(self) -> list[int]:
        """The device indices this Trainer uses on each node (Lightning's)."""
        if self._accelerator == "cuda" and self.num_devices == 1 and not self.strategy.is_distributed:
            return [self.strategy.root_device.index or 0]
        return list(range(self.num_devices))

    @property
    def estimated_stepping_batches(self) -> int | float:
        """The optimizer steps the fit will take, as Lightning estimates them: training batches per
        epoch (asking for the train loader if need be) / accumulate_grad_batches, rounded up, times
        max_epochs, capped by max_steps; infinite (or max_steps) without an epoch limit or a length."""
        max_epochs = self.max_epochs
        if max_epochs == -1:
            return float("inf") if self.max_steps == -1 else self.max_steps
        loop = self.fit_loop
        if loop.loader is None:
            rank_zero_info(self, "Loading `train_dataloader` to estimate number of stepping batches.")
            loop.setup_data()
        if loop.num_training_batches == float("inf") and loop.loader is not None:
            loop.setup_batches(loop.loader)
        total = loop.num_training_batches
        if total == float("inf"):
            return self.max_steps
        steps = math.ceil(total / self.accumulate_grad_batches) * max(max_epochs or 1, 1)
        return min(steps, self.max_steps) if self.max_steps != -1 else steps

    @property
    def _active_loop(self) -> FitLoop | EvaluationLoop | PredictionLoop | None:
        if self.training:
            return self.fit_loop
        if self.sanity_checking or self.evaluating:
            return self._evaluation_loop
        if self.predicting:
            return self.predict_loop
        return None

    @property
    def _evaluation_loop(self) -> EvaluationLoop:
        if self.state.fn == TrainerFn.FITTING:
            return self.val_loop
        if self.state.fn == TrainerFn.VALIDATING:
            return self.validate_loop
        if self.state.fn == TrainerFn.TESTING:
            return self.test_loop
        raise RuntimeError("The `Trainer._evaluation_loop` property isn't defined. Accessed outside of scope")

    @property
    def _logger_connector(self) -> LoggerConnector:
        return LoggerConnector(self, lambda: self._active_loop)

    # -- what mopt_fast's monitoring callbacks use (core/protocol.py's MonitorTrainer) ---------------
    @property
    def should_update_logs(self) -> bool:
        """Step metrics go to the loggers now: Lightning's rule for the loop running."""
        return self._logger_connector.should_update_logs

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """`metrics` straight to every logger (DeviceStatsMonitor, ThroughputMonitor)."""
        self._logger_connector.log_metrics(metrics, step=step)

    @property
    def evaluation_loop(self) -> EvaluationLoop | None:
        """The validation or test loop of the running fit / validate / test (None otherwise)."""
        fn = self.state.fn
        return None if fn is None or fn == TrainerFn.PREDICTING else self._evaluation_loop


    # -- what the module, the optimizer wrapper and ModelCheckpoint call (see core/protocol.py) --------
    # training_step.backward and .optimizer_step, bound to the Trainer (one call less per step than a
    # method calling them): see __init__.
    run_backward: Callable[..., None]
    run_optimizer_step: Callable[..., Any]

    def call_batch_hook(self, name: str, *args: Any) -> Any:
        """The batch-transfer hook `name` of the data module when it overrides it, else of the
        module, run as that hook (what the module's ``_on_before_batch_transfer`` /
        ``_apply_batch_transfer_handler`` call, as Lightning's `_call_batch_hook`)."""
        return self.hooks.run_as(name, getattr(batch_hook_owner(self, name), name), *args)

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """The checkpoint of the current state, as a dictionary (what `save_checkpoint` writes)."""
        return resume.checkpoint_dict(self, weights_only)

    # -- what the learning-rate and batch-size finders ask (core/protocol.py's TuningTrainer) ----------
    # Lightning's finders reach into its Trainer (the checkpoint connector, the loops' loaders); these
    # are the same capabilities, public. Nothing here runs unless a finder runs. Inside a fit they
    # act on the fit loop; inside validate / test / predict (the batch-size search) on that loop.
    _TUNING_SAVED = ("optimizers", "lr_scheduler_configs", "callbacks", "loggers")
    # What a trial of an evaluation or prediction loop changes, put back after each (Lightning's
    # dump and reload of that loop's state).
    _TUNING_EVAL_STATE = ("batches_total", "batches_current", "batches_logged", "_has_run")

    def _tuning_eval_loop(self) -> EvaluationLoop | PredictionLoop | None:
        """The validate / test / predict loop running, or None inside a fit."""
        loop = self._active_loop
        return None if loop is None or loop is self.fit_loop else loop  # type: ignore[return-value]

    def _tuning_eval_state(self, loop: EvaluationLoop | PredictionLoop) -> dict[str, Any]:
        return {name: copy.copy(getattr(loop, name)) for name in self._TUNING_EVAL_STATE if hasattr(loop, name)}

    def _set_tuning_eval_state(self, loop: EvaluationLoop | PredictionLoop, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(loop, name, copy.copy(value))

    @contextlib.contextmanager
    def tuning_trials(self, callbacks: list[Any], **settings: Any) -> Generator[None, None, None]:
        """Inside: the fit loop (or the validate / test / predict loop running) runs with only
        `callbacks`, a logger that logs nothing in place of the user's (none without one), the
        Trainer `settings` (max_steps, limit_*_batches) set, and no results printed; afterwards
        those, the optimizers and schedulers and the loop's position are put back, and the run no
        longer stops (Lightning's finders' dump, reset and restore of their parameters)."""
        saved = {name: getattr(self, name) for name in (*self._TUNING_SAVED, *settings)}
        eval_loop = self._tuning_eval_loop()
        if eval_loop is None:
            self._tuning_loop_state = copy.deepcopy(self.fit_loop.state_dict())
        else:
            self._tuning_loop_state = self._tuning_eval_state(eval_loop)
            verbose = isinstance(eval_loop, EvaluationLoop) and eval_loop.verbose
            if isinstance(eval_loop, EvaluationLoop):
                eval_loop.verbose = False  # no results printed for the trials
        self.callbacks = list(callbacks)
        self.logger = DummyLogger() if self.logger is not None else None
        for name, value in settings.items():
            setattr(self, name, value)
        self.hooks.build(self.callbacks, self.lightning_module)  # type: ignore[arg-type]  # attached in a run
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
            if eval_loop is None:
                self.fit_loop.load_state_dict(copy.deepcopy(self._tuning_loop_state))
                self.should_stop = False
            else:
                self._set_tuning_eval_state(eval_loop, self._tuning_loop_state)
                if isinstance(eval_loop, EvaluationLoop):
                    eval_loop.verbose = verbose
            self.hooks.build(self.callbacks, self.lightning_module)  # type: ignore[arg-type]

    def run_tuning_trial(self) -> None:
        """The fit loop (or the validate / test / predict loop) once more, from where it stood when
        `tuning_trials` was entered (Lightning's `_try_loop_run`): a trial of the finders. Its RNG
        draws are the caller's to isolate."""
        eval_loop = self._tuning_eval_loop()
        if eval_loop is not None:
            self._set_tuning_eval_state(eval_loop, self._tuning_loop_state)
            eval_loop.run()
            return
        loop = self.fit_loop
        loop.load_state_dict(copy.deepcopy(self._tuning_loop_state))
        loop.resume_rng = None  # a run from that position, not a resume from a checkpoint
        assert self.lightning_module is not None  # the finders run inside a fit
        loop.run(self.lightning_module)

    def save_tuning_checkpoint(self, path: str) -> None:
        """`save_checkpoint(path)`, also inside validate / test / predict (no optimizers: none
        saved), as Lightning's finders save the run they put back."""
        if self.optimizers:
            self.save_checkpoint(path)
        else:
            self._save_checkpoint(path, False, None)

    def restore_tuning_checkpoint(self, path: str) -> None:
        """The run as `path` holds it (model, optimizers, schedulers, loops, callbacks, data module),
        as Lightning's checkpoint connector restores a finder's checkpoint; the loaders are asked for
        again (the trials changed their settings). ``trainer.ckpt_path`` is then `path`, as Lightning's.
        Inside validate / test / predict: the loaders first, then the module's, the data module's and
        the callbacks' states (Lightning's order there; no optimizers)."""
        eval_loop = self._tuning_eval_loop()
        if eval_loop is not None:
            self.reload_dataloaders()
        rank_zero_info(self, f"Restoring states from the checkpoint path at {path}")
        self._ckpt_path = path
        ckpt = self.strategy.load_checkpoint(path, weights_only=True)
        if eval_loop is not None:
            resume.restore_evaluation(self, ckpt)
            return
        self.val_loop.reset_data()
        resume.restore(self, ckpt)
        resume.restore_optimizers(self, ckpt)  # a finder restores inside the fit, after on_fit_start
        self.fit_loop.resume_rng = None  # the fit goes on from here with the RNG as it is
        self.reload_dataloaders()

    def reload_dataloaders(self) -> None:
        """Ask for the train loader again (a fit's validation loaders too), or for the validate /
        test / predict loaders: the batch size changed."""
        eval_loop = self._tuning_eval_loop()
        if eval_loop is not None:
            eval_loop.setup_data()  # outside a fit, a request every time
            return
        self.fit_loop.loader = None
        self.fit_loop.prepare_first_iterator()
        self.val_loop.reset_data()
        if self.enable_validation:
            self.val_loop.setup_data()

    def tuning_dataset_length(self) -> int | None:
        """The length of the data set(s) of the loop running: the train loader's inside a fit
        (`train_dataset_length`), else the validate / test / predict loaders', asked for again as
        Lightning's batch-size search does (None: iterable-style only)."""
        eval_loop = self._tuning_eval_loop()
        if eval_loop is None:
            return self.train_dataset_length()
        eval_loop.setup_data()
        lengths = [self._sized_len(getattr(loader, "dataset", None)) for loader in eval_loop.loaders or ()]
        sized = [n for n in lengths if n is not None]
        return sum(sized) if sized else None  # Lightning's "sequential" CombinedLoader: the sum

    @staticmethod
    def _sized_len(dataset: Any) -> int | None:
        try:
            return len(dataset)
        except (TypeError, NotImplementedError):
            return None

    def tuning_loader_count(self) -> int:
        """How many loaders the validate / test / predict loop running has (asked for now)."""
        eval_loop = self._tuning_eval_loop()
        assert eval_loop is not None  # asked by the batch-size search outside a fit only
        eval_loop.setup_data()
        return len(eval_loop.loaders or ())

    @property
    def tuning_stage_prefix(self) -> str:
        """The dataloader prefix of the loop running ("train", "val", "test", "predict")."""
        loop = self._active_loop
        return "train" if loop is None or loop is self.fit_loop else loop.prefix  # type: ignore[union-attr]

    def train_dataset_length(self) -> int | None:
        """The length of the train loader's dataset (None: an iterable-style one); sets the loader up
        if the fit has not yet (Lightning's `_dataset_length` of the fit loop's loader)."""
        if self.fit_loop.loader is None:
            self.fit_loop.prepare_first_iterator()
        return self._sized_len(getattr(self.fit_loop.loader, "dataset", None))

    def uses_module_data(self) -> bool:
        """The train data comes from the module's or a data module's hook, not from loaders given."""
        return self.fit_loop.source.is_module()

    # -- building the model ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Tensors made inside are made on the Trainer's device right away (Lightning's); with
        `empty_init`, modules keep uninitialized weights (for a checkpoint to overwrite)."""
        if isinstance(self.strategy, FSDPStrategy):
            # Lightning's warning, where the strategy shards in `model_sharded_context`.
            warn(
                f"`trainer.init_module` cannot fully support proper instantiation of your model with the"
                f" `{type(self.strategy).__name__}` strategy. Please instantiate your model inside the"
                f"`LightningModule.configure_model` hook instead",
                PossibleUserWarning,
            )
        with _model_setup.tensor_init_context(self, empty_init=empty_init):
            yield

    # -- the entry points ---------------------------------------------------------------------------
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | os.PathLike | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train `model` on `train_dataloaders` (or a data module's / the model's
        `train_dataloader()`), validating on `val_dataloaders` (or `val_dataloader()`) when it defines
        `validation_step`. A `LightningDataModule` may come as `datamodule` or in place of
        `train_dataloaders`. `ckpt_path`: resume from this checkpoint, "last" or "best"."""
        self._connect(model)
        self._ckpt_weights_only = weights_only
        self.state.fn = TrainerFn.FITTING
        self.state.status = TrainerStatus.RUNNING
        self.training = True
        self.should_stop = False
        self._preemption.received = None
        try:
            self._run_entry(self._fit_impl, model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)
        except BaseException:
            self._preemption.restore()  # the handlers _run installed, if it got that far
            raise
        # A fit that returned acted on no signal: one that came after the last batch is raised again.
        self._preemption.restore(redeliver=True)

    def _fit_impl(self, model: LightningModule, train_dataloaders: Any, val_dataloaders: Any,
                  datamodule: LightningDataModule | None, ckpt_path: Any) -> None:
        if is_datamodule(train_dataloaders):
            datamodule, train_dataloaders = train_dataloaders, None
        if (train_dataloaders is not None or val_dataloaders is not None) and datamodule is not None:
            raise MisconfigurationException(
                "You cannot pass `train_dataloader` or `val_dataloaders` to `trainer.fit(datamodule=...)`"
            )
        self._attach(model, datamodule, train=train_dataloaders, val=val_dataloaders)
        path = self._select_ckpt_path(ckpt_path, model_provided=True)
        self._run(model, path)
        self.training = False

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """One pass of `validation_step` over `dataloaders` (or a data module's / the model's
        `val_dataloader()`); returns the logged epoch metrics, one dict per dataloader, and prints
        them (`verbose`). `ckpt_path`: "best", "last" or a checkpoint to load the weights from
        (default: the model's current weights; "best" when no model is given)."""
        self._ckpt_weights_only = weights_only
        return self._evaluate(TrainerFn.VALIDATING, model, dataloaders, ckpt_path, verbose, datamodule)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | os.PathLike | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> list[dict[str, float]]:
        """`validate` for `test_step` and `test_dataloader()`."""
        self._ckpt_weights_only = weights_only
        return self._evaluate(TrainerFn.TESTING, model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | os.PathLike | None = None,
        weights_only: bool | None = None,
    ) -> list[Any] | None:
        """`predict_step` (by default ``model(batch)``) over `dataloaders` (or
        `predict_dataloader()`); returns the predictions, moved to the CPU: a list per batch, or a
        list of those per dataloader when there are several (None with
        `return_predictions=False`)."""
        name = "predict"
        if model is None:
            if self.lightning_module is None:
                raise TypeError(f"`Trainer.{name}()` requires a `LightningModule` when it hasn't been passed in a previous run")
        else:
            self._connect(model)
        self._ckpt_weights_only = weights_only
        self.state.fn = TrainerFn.PREDICTING
        self.state.status = TrainerStatus.RUNNING
        self.predicting = True
        return self._run_entry(self._predict_impl, model, dataloaders, datamodule, return_predictions, ckpt_path)

    def _predict_impl(self, model: LightningModule | None, dataloaders: Any, datamodule: LightningDataModule | None,
                      return_predictions: bool | None, ckpt_path: Any) -> list[Any] | None:
        self.predict_loop.return_predictions = True if return_predictions is None else bool(return_predictions)
        if is_datamodule(dataloaders):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule:
            raise MisconfigurationException("You cannot pass both `trainer.predict(dataloaders=..., datamodule=...)`")
        provided = model is not None
        model = model if provided else self.lightning_module
        assert model is not None  # the entry point refused a run without a module
        self._attach(model, datamodule, predict=dataloaders)
        path = self._select_ckpt_path(ckpt_path, model_provided=provided)
        results = self._run(model, path)
        self.predicting = False
        return results

    def _evaluate(self, fn: TrainerFn, model: LightningModule | None, dataloaders: Any, ckpt_path: Any,
                  verbose: bool, datamodule: LightningDataModule | None) -> list[dict[str, float]]:
        name = fn.value
        if model is None:
            if self.lightning_module is None:
                raise TypeError(f"`Trainer.{name}()` requires a `LightningModule` when it hasn't been passed in a previous run")
        else:
            self._connect(model)
        self.state.fn = fn
        self.state.status = TrainerStatus.RUNNING
        stage = RunningStage.VALIDATING if fn == TrainerFn.VALIDATING else RunningStage.TESTING
        self.state.stage = stage
        return self._run_entry(self._evaluate_impl, fn, stage, model, dataloaders, ckpt_path, verbose, datamodule)

    def _evaluate_impl(self, fn: TrainerFn, stage: RunningStage, model: LightningModule | None, dataloaders: Any,
                       ckpt_path: Any, verbose: bool, datamodule: LightningDataModule | None) -> list[dict[str, float]]:
        if is_datamodule(dataloaders):
            datamodule, dataloaders = dataloaders, None
        if dataloaders is not None and datamodule:
            raise MisconfigurationException(
                f"You cannot pass both `trainer.{fn.value}(dataloaders=..., datamodule=...)`"
            )
        provided = model is not None
        model = model if provided else self.lightning_module
        assert model is not None  # the entry point refused a run without a module
        loop = self.validate_loop if fn == TrainerFn.VALIDATING else self.test_loop
        loop.verbose = verbose
        self._attach(model, datamodule, **{"val" if fn == TrainerFn.VALIDATING else "test": dataloaders})
        path = self._select_ckpt_path(ckpt_path, model_provided=provided)
        results = self._run(model, path)
        self._set_stage(stage, False)
        return results_to_scalars(results)

    def _connect(self, model: Any) -> None:
        if not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a `mopt_fast.LightningModule`, got {type(model).__qualname__}")
        self.lightning_module = model

    def _attach(self, model: LightningModule, datamodule: LightningDataModule | None, train: Any = None,
                val: Any = None, test: Any = None, predict: Any = None) -> None:
        """Where each loop's dataloaders come from this run (Lightning's `attach_data`): the loaders
        given, else the data module, else the model."""
        if datamodule is not None and not is_datamodule(datamodule):
            raise TypeError(
                f"`datamodule` must be a `mopt_fast.LightningDataModule` (or Lightning's), got "
                f"{type(datamodule).__qualname__}"
            )
        fallback = datamodule if datamodule is not None else model
        self.fit_loop.source.instance = train if train is not None else fallback
        self.fit_loop.loader = None
        for loop, given in ((self.val_loop, val), (self.validate_loop, val), (self.test_loop, test),
                            (self.predict_loop, predict)):
            loop.source.instance = given if given is not None else fallback
            loop.loaders = None
        self.val_loop.reset_data()
        if datamodule is not None:
            self.datamodule = datamodule
            datamodule.trainer = self
        model.trainer = self

    def _run_entry(self, impl: Callable[..., Any], *args: Any) -> Any:
        """Runs an entry point's work as Lightning's `_call_and_handle_interrupt`: a failure calls
        on_exception (callbacks, data module) and finalizes the loggers as "failed", then
        propagates; Ctrl-C (KeyboardInterrupt) does the same, then exits the process with status 1
        after ignoring further Ctrl-C."""
        sigint = signal.getsignal(signal.SIGINT)
        try:
            return impl(*args)
        except KeyboardInterrupt as exc:
            if self.is_global_zero:
                print("\nDetected KeyboardInterrupt, attempting graceful shutdown ...", file=sys.stderr, flush=True)
            main_thread = threading.current_thread() is threading.main_thread()
            if main_thread:  # no second Ctrl-C during the shutdown; the handler is put back after it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._interrupt(exc)
            self._teardown()
            if main_thread and sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            sys.exit(1)
        except _TunerExitException:  # a Tuner's finder is done: the run ends here, as a finished one
            self._end_tuner_run()
            return None
        except BaseException as exc:
            clearer = self._explain_failure(exc)
            self._interrupt(clearer)
            self._teardown()
            self.state.stage = None
            if clearer is not exc:
                raise clearer from exc
            raise

    def _end_tuner_run(self) -> None:
        """After a Tuner's finder (Lightning's handling of its `_TunerExitException`): the teardown
        hooks, the loggers finalized as a success, no on_fit_end."""
        fn = self.state.fn
        self.hooks.call_datamodule("teardown", stage=fn)
        self.hooks.call("teardown", stage=fn)
        for lg in self._rank_zero_loggers():
            lg.finalize("success")
        self.fit_loop.prepared_iterator = None  # the next fit asks for its loader afresh (Lightning drops it too)
        self._teardown()
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None

    def _interrupt(self, exc: BaseException) -> None:
        self.state.status = TrainerStatus.INTERRUPTED
        if not isinstance(exc, SIGTERMException):  # preempted: every rank stops on its own, after its hooks
            self.strategy.abort()
        model = self.lightning_module
        profiler = self.hooks.profiler
        for cb in self.callbacks:
            if profiler is not None:  # a profiled run calls every callback's, as Lightning does
                with profiler.profile(f"[Callback]{cb.state_key}.on_exception"):
                    cb.on_exception(self, model, exc)
            elif is_overridden("on_exception", cb, callback_base(cb)):
                cb.on_exception(self, model, exc)
        self.hooks.call_datamodule("on_exception", exc)
        if self.is_global_zero:
            for lg in self.loggers:
                lg.finalize("failed")

    def _teardown(self) -> None:
        """After every entry point (as Lightning's `Trainer._teardown`): persistent DataLoader
        workers stop (else they live on until the model/trainer reference cycle is collected, whose
        finalizers cannot signal them: each then waits out DataLoader's 5-second join timeout), and
        the metric dictionaries move to the CPU."""
        shut_down_workers(self.fit_loop.loader)
        for loop in (self.val_loop, self.validate_loop, self.test_loop, self.predict_loop):
            loop.teardown()
        self.strategy.teardown()  # Lightning's: the checkpoint IO's teardown; FSDP: an async save completed
        metrics = self.metric_store
        for name in ("_callback", "_logged", "_pbar"):
            values = getattr(metrics, name, None)
            if values:
                for k, v in values.items():
                    if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                        values[k] = v.cpu()

    def _run(self, model: LightningModule, ckpt_path: str | None) -> Any:
        """What fit, validate, test and predict share (Lightning's `Trainer._run`): set-up, the
        hooks around the stage, the stage, tear-down."""
        fn = self.state.fn
        if fn == TrainerFn.FITTING and self.max_epochs is None:  # Lightning's _parse_loop_limits
            if self.max_steps == -1 and not any(isinstance(cb, kind_of(Timer, "Timer")) for cb in self.callbacks):
                warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
                     "`max_epochs=-1`.", PossibleUserWarning)
                self.max_epochs = 1000
            else:
                self.max_epochs = -1
        if self.barebones:  # no progress bar can make it look as if the Trainer hung (Lightning's line)
            _args.info("`Trainer(barebones=True)` started running. The progress bar is disabled so you might want to"
                       " manually print the progress in your model.")
        if model.hparams:  # Lightning's: what cannot be pickled would fail every checkpoint save
            clean_namespace(model.hparams)
        self.hooks = hook_runner(self, self.profiler)  # profiled only when it records: no cost per step else
        _model_setup.attach_model_callbacks(self, model, self.hooks.run_as)
        _model_setup.attach_model_logging_functions(self, model)
        self._verify_configuration(model)
        _model_setup.verify_configure_model(model)
        self._connect_lightning_objects()
        self.strategy.setup_environment(self._accelerator)
        self._setup_profiler(model)
        self._prepare_data(model)
        self.hooks.build(self.callbacks, model)
        self.batch_transfer = batch_transfer(self)
        self._ckpt_path = ckpt_path
        model.to(self.root_device)
        start_experiments(self)
        self.hooks.call_datamodule("setup", stage=fn)
        self.hooks.call("setup", stage=fn)
        _model_setup.call_configure_model(self, model, self.hooks.run_as)
        self.precision_plugin.convert_module(model)  # "*-true": before the optimizers see the parameters
        restored_metrics = resumed = None
        if fn == TrainerFn.FITTING:
            if self.sync_batchnorm and self.strategy.is_distributed:
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.strategy.wrap(model)
            self._setup_optimizers(model)
            if ckpt_path is not None:
                resumed = resume.load_for_resume(self, ckpt_path, self._ckpt_weights_only)
                restored_metrics = resume.restore(self, resumed)
        elif ckpt_path is not None:
            resume.restore_weights(self, ckpt_path, self._ckpt_weights_only)
        self.metric_store = MetricStore()
        if fn == TrainerFn.FITTING:
            self.hooks.call("on_fit_start")
            if resumed is not None:  # after on_fit_start, as Lightning (see resume.restore_optimizers)
                resume.restore_optimizers(self, resumed)
        if self.enable_autolog_hparams:
            log_hyperparams_at_start(self)  # after on_fit_start, as Lightning

        model.zero_grad()  # gradients left from before must not leak into the first step
        results: Any = None
        if fn == TrainerFn.FITTING:
            # Installed once set-up and restore are done (as Lightning): a signal before that ends the
            # process as usual (nothing to save yet, and a process blocked in set-up could not act on it).
            self._preemption.install()
            self._run_fit(model, restored_metrics)
        elif fn == TrainerFn.PREDICTING:
            results = self.predict_loop.run()
        else:
            results = (self.validate_loop if fn == TrainerFn.VALIDATING else self.test_loop).run()

        self._teardown()
        if fn == TrainerFn.FITTING:
            self.hooks.call("on_fit_end")
        self.hooks.call_datamodule("teardown", stage=fn)
        self.hooks.call("teardown", stage=fn)
        for lg in self._rank_zero_loggers():
            lg.finalize("success")
        self.profiler.describe()  # the stage's report, after the loggers finalize (Lightning's order)
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None
        return results

    def _run_fit(self, model: LightningModule, restored_metrics: dict[str, Any] | None) -> None:
        """The fit stage: the sanity check, then the fit loop; `restored_metrics`, the metric state
        of the checkpoint a resumed fit restored (the loops hold their own)."""
        loop, val_loop = self.fit_loop, self.val_loop
        if loop.resume_rng is None:
            loop.train_workers, val_loop.workers_started = None, False
            loop.resume_train_workers_running = val_loop.resume_workers_running = False
        loop.validation_has_run = False
        if self.enable_validation and self.num_sanity_val_steps > 0:
            stage = self.state.stage
            self.sanity_checking = True
            self.hooks.call("on_sanity_check_start")
            with isolated_rng():
                val_loop.run()
            self.hooks.call("on_sanity_check_end")
            val_loop.reset_progress()  # the sanity check's batches are not counted (Lightning's)
            self.metric_store = MetricStore()
            self.state.stage = stage
        if restored_metrics is not None:  # after the sanity check, which starts the metrics afresh
            self.metric_store.load_state_dict(restored_metrics, model)
        self.metric_store.active = self.metric_store.train  # on_train_start / on_train_epoch_start may log
        with torch.autograd.set_detect_anomaly(self.detect_anomaly):
            loop.run(model)

    def _connect_lightning_objects(self) -> None:
        """When the script brought Lightning's own callbacks (Lightning is imported): what lets them
        run here (see _lightning_surface.py), and a clear error for Lightning's finder callbacks, which
        drive its Trainer's internals: ours (mopt_fast.callbacks) do the same on this Trainer."""
        if "lightning.pytorch" not in sys.modules and "pytorch_lightning" not in sys.modules:
            return
        for name in ("BatchSizeFinder", "LearningRateFinder"):
            if any(is_lightning_callback(cb, name) for cb in self.callbacks):
                raise not_built(
                    f"Lightning's `{name}` callback in mopt_fast.Trainer",
                    f"it runs on Lightning's Trainer internals (its checkpoint connector and loops); use "
                    f"`mopt_fast.callbacks.{name}` (same arguments, same result), or `mopt_fast.tuner.Tuner`")
        install_is_overridden_fallback()
        self.precision_plugin = lightning_precision_view(self.precision_plugin)

    def _verify_configuration(self, model: LightningModule) -> None:
        """Lightning's `_verify_loop_configurations`: what a module must define for this entry point."""
        fn = self.state.fn
        assert fn is not None  # the entry point set it
        name = type(model).__name__
        if fn == TrainerFn.FITTING:
            for hook in ("training_step", "configure_optimizers"):
                if not is_overridden(hook, model, LightningModule):
                    raise MisconfigurationException(
                        f"No `{hook}()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, "
                        "`train_dataloader()` and `configure_optimizers()` to be defined."
                    )
            has_val_loader = self.val_loop.source.is_defined()
            has_val_step = is_overridden("validation_step", model, LightningModule)
            if has_val_loader and not has_val_step:
                warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.")
            if has_val_step and not has_val_loader:
                warn("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.")
            for legacy, instead in (("training_epoch_end", "on_train_epoch_end"),
                                    ("validation_epoch_end", "on_validation_epoch_end")):
                if callable(getattr(model, legacy, None)):
                    raise NotImplementedError(
                        f"Support for `{legacy}` has been removed in v2.0.0. `{name}` implements this method. You can "
                        f"use the `{instead}` hook instead. To access outputs, save them in-memory as instance "
                        "attributes. You can find migration examples in "
                        "https://github.com/Lightning-AI/pytorch-lightning/pull/16520."
                    )
            if not model.automatic_optimization:
                if self.gradient_clip_val is not None and self.gradient_clip_val > 0:
                    raise MisconfigurationException(
                        f"Automatic gradient clipping is not supported for manual optimization. Remove "
                        f"`Trainer(gradient_clip_val={self.gradient_clip_val})` or switch to automatic optimization."
                    )
                if self.accumulate_grad_batches != 1:
                    raise MisconfigurationException(
                        f"Automatic gradient accumulation is not supported for manual optimization. Remove "
                        f"`Trainer(accumulate_grad_batches={self.accumulate_grad_batches})` or switch to automatic "
                        "optimization."
                    )
        elif fn == TrainerFn.PREDICTING:
            if model.predict_step is None:
                raise MisconfigurationException("`predict_step` cannot be None to run `Trainer.predict`")
            if not is_overridden("predict_step", model, LightningModule) and not is_overridden(
                "forward", model, torch.nn.Module
            ):
                raise MisconfigurationException("`Trainer.predict` requires `forward` method to run.")
        else:
            step = "validation_step" if fn == TrainerFn.VALIDATING else "test_step"
            if not is_overridden(step, model, LightningModule):
                raise MisconfigurationException(f"No `{step}()` method defined to run `Trainer.{fn.value}`.")
            legacy = "validation_epoch_end" if fn == TrainerFn.VALIDATING else "test_epoch_end"
            if callable(getattr(model, legacy, None)):
                raise NotImplementedError(
                    f"Support for `{legacy}` has been removed in v2.0.0. `{name}` implements this method. You can use "
                    f"the `on_{legacy}` hook instead. To access outputs, save them in-memory as instance attributes. "
                    "You can find migration examples in https://github.com/Lightning-AI/pytorch-lightning/pull/16520."
                )

    def _prepare_data(self, model: LightningModule) -> None:
        """prepare_data of the data module then the module, on local rank 0 of each node (or global
        rank 0 with ``prepare_data_per_node = False``), as Lightning."""
        local_zero = self.local_rank == 0
        global_zero = local_zero and self.node_rank == 0
        for owner, base in ((self.datamodule, datamodule_base(self.datamodule)), (model, LightningModule)):
            if owner is None or base is None or not is_overridden("prepare_data", owner, base):
                continue
            per_node = getattr(owner, "prepare_data_per_node", True)
            if (per_node and local_zero) or (not per_node and global_zero):
                owner.prepare_data()
            self.strategy.barrier()

    def _setup_optimizers(self, model: LightningModule) -> None:
        conf = self.hooks.run_as("configure_optimizers", model.configure_optimizers)
        automatic = model.automatic_optimization
        self.optimizers, self.lr_scheduler_configs = configure_optimizers(conf, automatic)
        if is_param_in_hook_signature(model.training_step, "optimizer_idx", explicit=True):
            raise _MultipleOptimizersError(
                "Training with multiple optimizers is only supported with manual optimization. Remove the "
                "`optimizer_idx` argument from `training_step`, set `self.automatic_optimization = False` and access "
                "your optimizers in `training_step` with `opt1, opt2, ... = self.optimizers()`."
            )
        if automatic and len(self.optimizers) > 1:
            raise _MultipleOptimizersError(
                "Training with multiple optimizers is only supported with manual optimization. Set "
                "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
                "`opt1, opt2, ... = self.optimizers()`."
            )
        for config in self.lr_scheduler_configs:
            scheduler = config.scheduler
            if (not isinstance(scheduler, (torch.optim.lr_scheduler.LRScheduler,
                                           torch.optim.lr_scheduler.ReduceLROnPlateau))
                    and not is_overridden("lr_scheduler_step", model, LightningModule) and automatic):
                raise MisconfigurationException(
                    f"The provided lr scheduler `{type(scheduler).__name__}` doesn't follow PyTorch's LRScheduler API. "
                    "You should override the `LightningModule.lr_scheduler_step` hook with your own logic if you are "
                    "using a custom LR scheduler."
                )
        wrappers = []
        for opt in self.optimizers:
            w = LightningOptimizer(opt, precision=self.precision_plugin)
            w._trainer = self
            wrappers.append(w)
        self.lightning_optimizers = wrappers
        self.before_update = {id(o): training_step.make_before_update(self, o) for o in self.optimizers}

    # -- checkpoints and loggers -------------------------------------------------------------------
    def _select_ckpt_path(self, ckpt_path: Any, model_provided: bool) -> str | None:
        """The path set with ``trainer.ckpt_path = ...`` unless the entry point names one (with
        Lightning's warning then), else `resume.select_ckpt_path`."""
        if self._ckpt_path_user_managed:
            if not ckpt_path:
                return self._ckpt_path
            assert self.state.fn is not None  # the entry point set it
            warn(
                f"`trainer.ckpt_path = {self._ckpt_path!r}` was called but then you passed "
                f"`trainer.{self.state.fn.value}(ckpt_path={ckpt_path!r})`. The latter will be loaded.")
            self._ckpt_path, self._ckpt_path_user_managed = None, False
        return resume.select_ckpt_path(self, ckpt_path, model_provided)

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False,
                        storage_options: Any | None = None) -> None:
        """Write a checkpoint of the current state to `filepath` (atomically, unless a checkpoint IO
        plugin writes it otherwise). `weights_only`: the model only, no optimizer, scheduler or loop
        state (such a file cannot resume a fit); `storage_options`: for a checkpoint IO plugin."""
        if self.lightning_module is None or not self.optimizers and not weights_only:
            raise RuntimeError("save_checkpoint() needs a model that has been fitted (or is being fitted)")
        profiler = active_profiler(self.profiler)
        if profiler is not None:
            with profiler.profile("save_checkpoint"):
                self._save_checkpoint(filepath, weights_only, storage_options)
        else:
            self._save_checkpoint(filepath, weights_only, storage_options)

    def _save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool, storage_options: Any | None) -> None:
        ckpt = self.dump_checkpoint(weights_only)
        # The DDP ranks hold the same state: global rank 0 writes (the strategy's rule), all wait.
        self.strategy.save_checkpoint(ckpt, filepath, storage_options=storage_options)
        self.strategy.barrier()

    # -- profiling (Trainer(profiler=...), _profiling.py) ----------------------------------------------
    def _setup_profiler(self, model: LightningModule) -> None:
        """The profiler's stage, rank and folder (the log_dir when it has none), at the start of each
        entry point, as Lightning's `__setup_profiler`."""
        assert self.state.fn is not None  # set by the entry point
        self.profiler._lightning_module = weakref.proxy(model)  # type: ignore[attr-defined]
        local_rank = self.local_rank if self.world_size > 1 else None
        self.profiler.setup(stage=self.state.fn, local_rank=local_rank, log_dir=self.log_dir)

    def _rank_zero_loggers(self) -> list[Logger]:
        return self.loggers if self.is_global_zero else []
