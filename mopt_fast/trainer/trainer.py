"""mopt_fast.Trainer: Lightning 2.6's Trainer, lean, on the fused kernels.

The Trainer holds the configuration (set-up in _args.py), the state (`trainer.state`: which entry
point and loop are running, see states.py), the hooks, and the entry points. The loops live in
their own files, each one Lightning's counterpart with less indirection:

- fit_loop.py: epochs, batches, scheduler steps, validation checks, logging, checkpoint points;
- training_step.py: one batch's training_step and its optimization (automatic or manual);
- evaluation_loop.py: validation inside fit (and the sanity check);
- resume.py: what a checkpoint holds, and resuming a fit exactly from one.

It is leaner per step than Lightning's: hooks nobody overrides are not called, logged values stay
on the device until a logger or the progress bar reads them, and the optimizer work runs on
mopt_fast's kernels. Distributed training runs on torch.distributed's DDP or FSDP2
(strategies.py). What other parts of mopt_fast may ask of the Trainer is written down in
_protocol.py.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.module import LightningModule
from mopt_fast.optimizer import LightningOptimizer
from mopt_fast.precision import Precision
from mopt_fast.trainer import _args, resume, training_step
from mopt_fast.trainer._configure import LRSchedulerConfig, configure_optimizers
from mopt_fast.trainer._data import isolated_rng, num_batches, shut_down_workers
from mopt_fast.trainer._metrics import MetricStore, to_scalars
from mopt_fast.trainer.callbacks import HOOKS, Callback, ProgressBar, monitoring_last
from mopt_fast.trainer.checkpoint import ModelCheckpoint, save_checkpoint_file
from mopt_fast.trainer.evaluation_loop import EvaluationLoop
from mopt_fast.trainer.fit_loop import FitLoop
from mopt_fast.trainer.loggers import Logger, log_hyperparams_at_fit_start
from mopt_fast.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from mopt_fast.trainer.strategies import Strategy

__all__ = ["Trainer"]

# Module hooks with a default that does something: always called.
_ALWAYS = {
    "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step", "backward",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad",
}


def _overrides(obj: Any, base: type, name: str) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


def _takes_batch_idx(fn: Callable) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return "batch_idx" in [p.name for p in params] or len(params) >= 2


class Trainer:
    """Fits a `mopt_fast.LightningModule`; the arguments are Lightning's (keyword-only).

    Args:
        accelerator: "cpu", "cuda" (or "gpu"), or "auto" (CUDA when available).
        strategy: "auto", "ddp", "ddp_find_unused_parameters_true", "fsdp" (FSDP2), or a
            `DDPStrategy` / `FSDPStrategy`.
        devices: processes per node: "auto" (1), an int, or a list of CUDA device indices.
        num_nodes: nodes (each started by torchrun).
        precision: "32-true" / "32", "16-mixed" (CUDA; on the CPU it falls back to bf16-mixed with
            a warning, as Lightning), "bf16-mixed".
        logger: True (a CSVLogger under `default_root_dir`), False, a logger or a list of them.
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
        default_root_dir: where the loggers write (default: the working directory).
    """

    # Set by _args.configure:
    _accelerator: str
    _device_index: int | None
    num_nodes: int
    num_devices: int
    strategy: Strategy
    root_device: torch.device
    precision: str
    _precision: Precision
    accumulate_grad_batches: int
    gradient_clip_val: int | float | None
    gradient_clip_algorithm: str | None
    max_epochs: int
    max_steps: int
    limit_train_batches: int | float
    limit_val_batches: int | float
    val_check_interval: int | float
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    default_root_dir: str
    loggers: list[Logger]
    callbacks: list[Any]

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        precision: str | int | None = None,
        logger: bool | Logger | Iterable[Logger] | None = None,
        callbacks: Callback | list[Callback] | None = None,
        max_epochs: int | None = None,
        max_steps: int = -1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        val_check_interval: int | float | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        default_root_dir: str | os.PathLike | None = None,
        **unsupported: Any,
    ) -> None:
        args = dict(locals())
        del args["self"]
        _args.configure(self, args)
        self.state = TrainerState()
        self._metrics = MetricStore()
        self.lightning_module: LightningModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._before_update: dict[int, Callable[[], None] | None] = {}
        self._current_fx: str | None = None
        self._validation_has_run = False
        self._hooks: dict[str, list[tuple[Callable, bool]]] = {}
        self.fit_loop = FitLoop(self)
        self.val_loop = EvaluationLoop(self)
        self.num_val_batches: int | float = 0
        self.enable_validation = False
        self.should_stop = False

    # -- state -------------------------------------------------------------------------------------
    def _set_stage(self, stage: RunningStage, on: bool) -> None:
        if on:
            self.state.stage = stage
        elif self.state.stage == stage:
            self.state.stage = None

    @property
    def training(self) -> bool:
        return self.state.stage == RunningStage.TRAINING

    @training.setter
    def training(self, value: bool) -> None:
        self._set_stage(RunningStage.TRAINING, value)

    @property
    def validating(self) -> bool:
        return self.state.stage == RunningStage.VALIDATING

    @validating.setter
    def validating(self, value: bool) -> None:
        self._set_stage(RunningStage.VALIDATING, value)

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == RunningStage.SANITY_CHECKING

    @sanity_checking.setter
    def sanity_checking(self, value: bool) -> None:
        self._set_stage(RunningStage.SANITY_CHECKING, value)

    @property
    def testing(self) -> bool:
        return self.state.stage == RunningStage.TESTING

    @testing.setter
    def testing(self, value: bool) -> None:
        self._set_stage(RunningStage.TESTING, value)

    @property
    def predicting(self) -> bool:
        return self.state.stage == RunningStage.PREDICTING

    @predicting.setter
    def predicting(self, value: bool) -> None:
        self._set_stage(RunningStage.PREDICTING, value)

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

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
    def val_check_batch(self) -> int | float:
        return self.fit_loop.val_check_batch

    # -- what users read -------------------------------------------------------------------------
    @property
    def model(self) -> LightningModule | None:
        return self.lightning_module

    @property
    def logger(self) -> Logger | None:
        return self.loggers[0] if self.loggers else None

    @property
    def log_dir(self) -> str:
        return self.loggers[0].log_dir if self.loggers else self.default_root_dir

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.callback_metrics

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.logged_metrics

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.progress_bar_metrics

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._precision.scaler

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
    def checkpoint_callbacks(self) -> list[ModelCheckpoint]:
        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> ModelCheckpoint | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> ProgressBar | None:
        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

    # -- hooks -------------------------------------------------------------------------------------
    def _build_hook_table(self, module: LightningModule) -> None:
        table: dict[str, list[tuple[Callable, bool]]] = {}
        for name in HOOKS + tuple(_ALWAYS):
            fns: list[tuple[Callable, bool]] = []
            for cb in self.callbacks:
                if name in HOOKS and hasattr(cb, name) and _overrides(cb, Callback, name):
                    fns.append((getattr(cb, name), True))
            if hasattr(LightningModule, name) and (name in _ALWAYS or _overrides(module, LightningModule, name)):
                fns.append((getattr(module, name), False))
            if name == "on_train_epoch_end":  # EarlyStopping and checkpoints after the module (callbacks.py)
                fns = monitoring_last(fns)
            table[name] = fns
        self._hooks = table

    def _module_overrides(self, name: str) -> bool:
        return _overrides(self.lightning_module, LightningModule, name)

    @staticmethod
    def _takes_batch_idx(fn: Callable) -> bool:
        return _takes_batch_idx(fn)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Calls `name` on the callbacks (with trainer, module) and then the module; returns the
        module's result."""
        fns = self._hooks.get(name)
        if not fns:
            return None
        prev = self._current_fx
        self._current_fx = name
        result = None
        try:
            for fn, is_callback in fns:
                if is_callback:
                    fn(self, self.lightning_module, *args, **kwargs)
                else:
                    result = fn(*args, **kwargs)
        finally:
            self._current_fx = prev
        return result

    def _call_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        prev = self._current_fx
        self._current_fx = name
        try:
            return getattr(self.lightning_module, name)(*args, **kwargs)
        finally:
            self._current_fx = prev

    # -- what the module and the optimizer wrapper call (see _protocol.py) -------------------------
    def _backward(self, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        training_step.backward(self, loss, optimizer, *args, **kwargs)

    def _optimizer_step(self, wrapper: LightningOptimizer, closure: Callable[[], Any] | None, **kwargs: Any) -> Any:
        return training_step.optimizer_step(self, wrapper, closure, **kwargs)

    def _block_grad_sync(self, block: bool) -> contextlib.AbstractContextManager:
        return self.strategy.block_grad_sync(block)

    def _checkpoint_dict(self, weights_only: bool = False) -> dict[str, Any]:
        return resume.checkpoint_dict(self, weights_only)

    # -- fit ---------------------------------------------------------------------------------------
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | None = None,
    ) -> None:
        """Train `model` on `train_dataloaders` (or its `train_dataloader()`), validating on
        `val_dataloaders` (or its `val_dataloader()`) when it defines `validation_step`."""
        if not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a `mopt_fast.LightningModule`, got {type(model).__qualname__}")
        if datamodule is not None:
            raise NotImplementedError("fit(datamodule=...) is not supported yet; pass the dataloaders")
        self.lightning_module = model
        model.trainer = self
        self.fit_loop.loader = self.val_loop.loader = None
        self.state.fn = TrainerFn.FITTING
        self.state.status = TrainerStatus.RUNNING
        try:
            self.strategy.setup_environment(self)
            if self.strategy.is_distributed:
                self.root_device = self.strategy.root_device(self._accelerator)
            self._fit_impl(model, train_dataloaders, val_dataloaders, ckpt_path)
        except BaseException as exc:
            self.state.status = TrainerStatus.INTERRUPTED
            self.strategy.abort()
            for cb in self.callbacks:
                if _overrides(cb, Callback, "on_exception"):
                    cb.on_exception(self, model, exc)
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("failed")
            # A failed fit leaves no stage running (Lightning sets its stage to None).
            self.state.stage = None
            raise
        finally:
            # As Lightning's teardown: persistent workers stop with the fit (else they live on
            # until the model/trainer reference cycle is collected, whose finalizers cannot
            # signal them: each then waits out DataLoader's 5-second join timeout).
            for loader in (self.fit_loop.loader, self.val_loop.loader):
                shut_down_workers(loader)
        self.state.status = TrainerStatus.FINISHED
        self.state.stage = None

    def _fit_impl(self, model: LightningModule, train_loader: Any, val_loader: Any, ckpt_path: str | None) -> None:
        loop, val_loop = self.fit_loop, self.val_loop
        self._metrics = MetricStore()
        self._build_hook_table(model)
        self.should_stop = False
        loop.train_workers, val_loop.workers_started = None, False
        loop.resume_train_workers_running = val_loop.resume_workers_running = False
        model.to(self.root_device)
        self.training = True
        self._call("setup", stage=TrainerFn.FITTING)
        self.strategy.wrap(model)
        self._setup_optimizers(model)
        ckpt = resume.load_for_resume(self, ckpt_path) if ckpt_path is not None else None
        if ckpt is not None:
            resume.restore(self, ckpt)
        self._call("on_fit_start")
        log_hyperparams_at_fit_start(self)  # after on_fit_start, as Lightning
        model.zero_grad()  # gradients left from before fit must not leak into the first step

        has_step = _overrides(model, LightningModule, "validation_step")
        if val_loader is None and has_step and self.limit_val_batches != 0:
            if _overrides(model, LightningModule, "val_dataloader"):
                self._current_fx = "val_dataloader"
                val_loader = model.val_dataloader()
                self._current_fx = None
        if val_loader is not None:
            val_loader = self.strategy.process_loader(val_loader, shuffle_default=False)
        val_loop.loader = val_loader
        self.enable_validation = val_loader is not None and has_step and self.limit_val_batches != 0
        if self.enable_validation:
            self.num_val_batches = num_batches(val_loader, self.limit_val_batches)
            if self.num_sanity_val_steps != 0:
                n = self.num_val_batches
                steps = n if self.num_sanity_val_steps == -1 else min(self.num_sanity_val_steps, n)
                with isolated_rng():
                    val_loop.run_in_fit(steps, sanity=True)
                self._metrics = MetricStore()
        if ckpt is not None:  # after the sanity check, which starts the metrics afresh
            self._metrics.load_state_dict(ckpt["metrics"], model)
        self._metrics.active = self._metrics.train  # on_train_start / on_train_epoch_start may log

        if train_loader is None:
            self._current_fx = "train_dataloader"
            train_loader = model.train_dataloader()
            self._current_fx = None
        train_loader = self.strategy.process_loader(train_loader, shuffle_default=True)
        loop.loader = train_loader
        if ckpt is not None:
            resume.warn_if_worker_streams_restart(self, ckpt, train_loader)
        loop.run(model, train_loader, ckpt)
        self._call("on_fit_end")
        self._call("teardown", stage=TrainerFn.FITTING)
        for lg in self._rank_zero_loggers():
            lg.finalize("success")

    def _setup_optimizers(self, model: LightningModule) -> None:
        self._current_fx = "configure_optimizers"
        try:
            conf = model.configure_optimizers()
        finally:
            self._current_fx = None
        automatic = model.automatic_optimization
        self.optimizers, self.lr_scheduler_configs = configure_optimizers(conf, automatic)
        if automatic and len(self.optimizers) > 1:
            raise MisconfigurationException(
                "Training with multiple optimizers is only supported with manual optimization. Set "
                "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
                "`opt1, opt2, ... = self.optimizers()`."
            )
        if not automatic:
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
        wrappers = []
        for opt in self.optimizers:
            w = LightningOptimizer(opt, precision=self._precision)
            w._trainer = self
            wrappers.append(w)
        self._lightning_optimizers = wrappers
        self._before_update = {id(o): training_step.make_before_update(self, o) for o in self.optimizers}

    # -- checkpoints and loggers -------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False) -> None:
        """Write a checkpoint of the current state to `filepath` (atomically). `weights_only`:
        the model only, no optimizer, scheduler or loop state (such a file cannot resume a fit)."""
        if self.lightning_module is None or not self.optimizers and not weights_only:
            raise RuntimeError("save_checkpoint() needs a model that has been fitted (or is being fitted)")
        ckpt = self._checkpoint_dict(weights_only)
        if self.is_global_zero:  # the DDP ranks hold the same state: one writes, all wait
            save_checkpoint_file(ckpt, os.fspath(filepath))
        self.strategy.barrier()

    def _rank_zero_loggers(self) -> list[Logger]:
        return self.loggers if self.is_global_zero else []

    def _log_to_loggers(self, logged: Mapping[str, torch.Tensor], step: int | None = None) -> None:
        if not logged or not self.loggers or not self.is_global_zero:
            return
        scalars = to_scalars(logged)
        if step is None:
            scalars.setdefault("epoch", self.current_epoch)
            step = self.fit_loop.batches_that_stepped
        for lg in self.loggers:
            lg.log_metrics(scalars, step)
            lg.save()
