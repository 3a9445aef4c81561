"""mopt_fast.Trainer: Lightning 2.6's fit loop, lean, on the fused kernels.

The loop follows Lightning's order of hooks, data-loader iterator creation (so the global RNG is
drawn from in the same order), scheduler steps, validation checks and metric bookkeeping, so a
module gives the same weights, global_step and callback_metrics under either Trainer. It is
leaner per step: hooks nobody overrides are not called, logged values stay on the device until a
logger or the progress bar reads them, and the optimizer work runs on mopt_fast's kernels.

Checkpoints resume exactly: a checkpoint records where in the loop it was taken and the RNG state
at the start of its epoch, and a resumed fit rebuilds the epoch's data order, skips the batches
already done and carries on from there.

Distributed training runs on torch.distributed's DDP or FSDP2 (see strategies.py).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.module import LightningModule
from mopt_fast.optimizer import LightningOptimizer, validate_clip_args
from mopt_fast.precision import Precision, make_precision, normalize_precision
from mopt_fast.trainer._configure import LRSchedulerConfig, configure_optimizers
from mopt_fast.trainer._metrics import MetricStore, to_scalars
from mopt_fast.trainer.callbacks import HOOKS, Callback, ModelSummary, TQDMProgressBar
from mopt_fast.trainer.checkpoint import FORMAT, ModelCheckpoint, load_checkpoint, rng_state, save_atomic, set_rng_state
from mopt_fast.trainer.loggers import CSVLogger, Logger, log_hyperparams_at_fit_start
from mopt_fast.trainer.strategies import FSDPStrategy, Strategy, make_strategy

__all__ = ["Trainer"]

# Lightning Trainer arguments this Trainer does not implement, with the value that means "off".
_UNSUPPORTED = {
    "fast_dev_run": False, "min_epochs": None, "min_steps": None, "max_time": None,
    "limit_test_batches": None, "limit_predict_batches": None, "overfit_batches": 0.0,
    "profiler": None, "detect_anomaly": False, "barebones": False, "plugins": None,
    "sync_batchnorm": False, "reload_dataloaders_every_n_epochs": 0, "use_distributed_sampler": True,
    "deterministic": None, "benchmark": None, "model_registry": None,
    # Lightning's fit validates under no_grad whatever this says; it matters for validate/test,
    # which this Trainer lacks.
    "inference_mode": True,
}
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


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _move(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_move(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _max_reached(current: int, maximum: int | None) -> bool:
    return maximum is not None and maximum != -1 and current >= maximum


class _Lookahead:
    """An iterator that knows whether the batch it just gave was the last (for loaders without
    a length)."""

    def __init__(self, it: Iterator) -> None:
        self._it = it
        self._next: Any = None
        self.done = False
        self._advance()

    def _advance(self) -> None:
        try:
            self._next = next(self._it)
        except StopIteration:
            self.done = True

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        item = self._next
        self._advance()
        return item


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Restores every global RNG afterwards (the sanity check must not change training)."""
    states: list[tuple[Callable, Any]] = [(torch.set_rng_state, torch.get_rng_state()),
                                          (random.setstate, random.getstate())]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append((torch.cuda.set_rng_state_all, torch.cuda.get_rng_state_all()))
    try:
        import numpy

        states.append((numpy.random.set_state, numpy.random.get_state()))
    except ImportError:  # numpy is optional
        pass
    try:
        yield
    finally:
        for setter, state in states:
            setter(state)


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
        for name, value in unsupported.items():
            if name not in _UNSUPPORTED:
                raise TypeError(f"Trainer() got an unexpected keyword argument {name!r}")
            if value != _UNSUPPORTED[name]:
                raise NotImplementedError(f"mopt_fast.Trainer does not support `{name}={value!r}` yet")
        self._accelerator, n_devices, self._device_index = self._parse_devices(accelerator, devices)
        if not isinstance(num_nodes, int) or num_nodes < 1:
            raise MisconfigurationException(f"`num_nodes` must be an int >= 1, got {num_nodes!r}")
        self.num_nodes = num_nodes
        self.num_devices = n_devices
        self.strategy: Strategy = make_strategy(strategy, n_devices, num_nodes)
        # The device is known once the process knows its rank (at fit); until then, this one.
        self.root_device = torch.device("cpu") if self._accelerator == "cpu" else torch.device(
            "cuda", self._device_index or 0)
        self.precision = normalize_precision("32-true" if precision is None else precision)
        self._precision: Precision = make_precision(self.precision, self._accelerator)
        self.precision = getattr(self._precision, "name", self.precision)

        for name, value in (("accumulate_grad_batches", accumulate_grad_batches),):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MisconfigurationException(f"`{name}` should be an int >= 1, got {value!r}")
        if max_steps is None or not isinstance(max_steps, int) or max_steps < -1:
            raise MisconfigurationException(f"`max_steps` must be an int >= -1, got {max_steps!r}")
        if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < -1):
            raise MisconfigurationException(f"`max_epochs` must be an int >= -1 or None, got {max_epochs!r}")
        self.accumulate_grad_batches = accumulate_grad_batches
        _, self.gradient_clip_algorithm = validate_clip_args(gradient_clip_val, gradient_clip_algorithm)
        self.gradient_clip_val = gradient_clip_val  # as given (Lightning compares it with clip_gradients')
        if max_epochs is None:
            max_epochs = 1000 if max_steps == -1 else -1
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.limit_train_batches = self._check_limit("limit_train_batches", limit_train_batches)
        self.limit_val_batches = self._check_limit("limit_val_batches", limit_val_batches)
        self.val_check_interval = 1.0 if val_check_interval is None else val_check_interval
        if isinstance(self.val_check_interval, float) and not 0.0 < self.val_check_interval <= 1.0:
            raise MisconfigurationException(
                f"`val_check_interval` should be a float in (0.0, 1.0] or an int, got {self.val_check_interval}"
            )
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.num_sanity_val_steps = 2 if num_sanity_val_steps is None else num_sanity_val_steps
        if self.num_sanity_val_steps != -1 and self.num_sanity_val_steps < 0:
            raise MisconfigurationException("`num_sanity_val_steps` must be >= -1")
        self.log_every_n_steps = 50 if log_every_n_steps is None else log_every_n_steps
        if self.log_every_n_steps < 0:
            raise MisconfigurationException("`log_every_n_steps` must be >= 0")
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()

        if logger is None or logger is True:
            self.loggers: list[Logger] = [CSVLogger(self.default_root_dir)]
        elif logger is False:
            self.loggers = []
        elif isinstance(logger, Iterable):
            self.loggers = list(logger)
        else:
            self.loggers = [logger]
        cbs = [] if callbacks is None else ([callbacks] if not isinstance(callbacks, (list, tuple)) else list(callbacks))
        if enable_progress_bar is not False and not any(isinstance(c, TQDMProgressBar) for c in cbs):
            cbs.append(TQDMProgressBar())
        if enable_progress_bar is False:
            cbs = [c for c in cbs if not isinstance(c, TQDMProgressBar)]
        if enable_model_summary is not False and not any(isinstance(c, ModelSummary) for c in cbs):
            cbs.insert(0, ModelSummary())
        has_checkpoint = any(isinstance(c, ModelCheckpoint) for c in cbs)
        if isinstance(self.strategy, FSDPStrategy):
            if has_checkpoint or enable_checkpointing:
                raise NotImplementedError("checkpoints under strategy='fsdp' are not built yet (sharded state)")
            enable_checkpointing = False
        if enable_checkpointing is False and has_checkpoint:
            raise MisconfigurationException(
                "Trainer was configured with `enable_checkpointing=False` but found `ModelCheckpoint` in callbacks list."
            )
        if enable_checkpointing is not False and not has_checkpoint:
            cbs.append(ModelCheckpoint())
        # Checkpoint callbacks go last, as Lightning orders them: they see what the others did.
        cbs = [c for c in cbs if not isinstance(c, ModelCheckpoint)] + [c for c in cbs if isinstance(c, ModelCheckpoint)]
        self.callbacks: list[Any] = cbs

        self._metrics = MetricStore()
        self.lightning_module: LightningModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._current_fx: str | None = None
        self._epochs_completed = 0
        self._manual_steps = 0
        self._auto_steps = 0
        self._batches_that_stepped = 0
        self._total_batch_idx = -1
        self._val_batches_logged = 0
        self._validation_has_run = False
        self._loop_stage = "start"  # where a checkpoint taken now sits in the loop (see _resume)
        self._epoch_rng: dict[str, Any] | None = None
        self.batch_idx = -1
        self.is_last_batch = False
        self.num_training_batches: int | float = float("inf")
        self.num_val_batches: int | float = 0
        self.val_check_batch: int | float = float("inf")
        self.should_stop = False
        self.training = False
        self.validating = False
        self.sanity_checking = False
        self._hooks: dict[str, list[tuple[Callable, bool]]] = {}

    # -- set-up helpers ---------------------------------------------------------------------
    @staticmethod
    def _parse_devices(accelerator: str, devices: Any) -> tuple[str, int, int | None]:
        """(accelerator type, processes per node, the one CUDA index asked for or None)."""
        acc = (accelerator or "auto").lower()
        if acc == "auto":
            acc = "cuda" if torch.cuda.is_available() else "cpu"
        if acc == "gpu":
            acc = "cuda"
        if acc not in ("cpu", "cuda"):
            raise MisconfigurationException(f"accelerator={accelerator!r} is not supported; use 'cpu', 'cuda' or 'auto'")
        if acc == "cuda" and not torch.cuda.is_available():
            raise MisconfigurationException("accelerator='cuda' but CUDA is not available")
        if devices in ("auto", None):
            return acc, 1, None
        if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
            devices = int(devices)
        if devices == -1 and acc == "cuda":
            return acc, torch.cuda.device_count(), None
        if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
            return acc, devices, None
        if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, int) for d in devices):
            if acc == "cpu" and len(devices) == 1:
                return acc, 1, None
            return acc, len(devices), int(devices[0]) if len(devices) == 1 else None
        raise MisconfigurationException(f"devices={devices!r} is not understood; use 'auto', an int >= 1 or a list")

    @staticmethod
    def _check_limit(name: str, value: Any) -> int | float:
        if value is None:
            return 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MisconfigurationException(f"`{name}` must be an int or a float, got {value!r}")
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise MisconfigurationException(f"`{name}` as a float must be in [0.0, 1.0], got {value}")
        if value < 0:
            raise MisconfigurationException(f"`{name}` must be >= 0, got {value}")
        return value

    @staticmethod
    def _num_batches(loader: Any, limit: int | float) -> int | float:
        try:
            length: int | float = len(loader)
        except TypeError:
            length = float("inf")
        if isinstance(limit, int):
            return min(length, limit)
        if length == float("inf"):
            if limit not in (0.0, 1.0):
                raise MisconfigurationException(
                    f"A loader without a length needs an int limit (batches) or 0.0 / 1.0, got {limit}"
                )
            return length if limit == 1.0 else 0
        return int(length * limit)

    # -- properties ----------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Optimizer steps taken: every wrapper step of every optimizer in manual optimization."""
        module = self.lightning_module
        if module is not None and not module.automatic_optimization:
            return self._manual_steps
        return self._auto_steps

    @property
    def current_epoch(self) -> int:
        return self._epochs_completed

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
    def progress_bar_callback(self) -> TQDMProgressBar | None:
        return next((c for c in self.callbacks if isinstance(c, TQDMProgressBar)), None)

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
            table[name] = fns
        self._hooks = table

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

    # -- what the module and the optimizer wrapper call -----------------------------------------
    def _backward(self, loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        self._call("on_before_backward", loss)
        loss = self._precision.scale_loss(loss)
        self.strategy.before_backward(self.lightning_module, loss)
        self._call_module("backward", loss, *args, **kwargs)
        self._call("on_after_backward")

    def _optimizer_step(self, wrapper: LightningOptimizer, closure: Callable[[], Any] | None, **kwargs: Any) -> Any:
        raw = wrapper._optimizer
        before = self._before_update.get(id(raw))
        return self._precision.optimizer_step(
            raw, closure, before, skip_if_no_loss=self.lightning_module.automatic_optimization, **kwargs
        )

    def _block_grad_sync(self, block: bool) -> contextlib.AbstractContextManager:
        return self.strategy.block_grad_sync(block)

    def _make_before_update(self, raw: torch.optim.Optimizer) -> Callable[[], None] | None:
        """What runs between the closure and the update: on_before_optimizer_step, then (automatic
        optimization) configure_gradient_clipping. None when neither has anything to do."""
        module = self.lightning_module
        hooks = self._hooks.get("on_before_optimizer_step")
        clip = module.automatic_optimization and (
            _overrides(module, LightningModule, "configure_gradient_clipping") or bool(self.gradient_clip_val)
        )
        if not hooks and not clip:
            return None

        def before_update() -> None:
            if hooks:
                self._call("on_before_optimizer_step", raw)
            if clip:
                self._call_module(
                    "configure_gradient_clipping", raw, gradient_clip_val=self.gradient_clip_val,
                    gradient_clip_algorithm=self.gradient_clip_algorithm,
                )

        return before_update

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
        try:
            self.strategy.setup_environment(self)
            if self.strategy.is_distributed:
                self.root_device = self.strategy.root_device(self._accelerator)
            self._fit(model, train_dataloaders, val_dataloaders, ckpt_path)
        except BaseException as exc:
            self.strategy.abort()
            for cb in self.callbacks:
                if _overrides(cb, Callback, "on_exception"):
                    cb.on_exception(self, model, exc)
            if self.is_global_zero:
                for lg in self.loggers:
                    lg.finalize("failed")
            # A failed fit leaves no stage running (Lightning sets its stage to None).
            self.training = self.validating = self.sanity_checking = False
            raise

    def _fit(self, model: LightningModule, train_loader: Any, val_loader: Any, ckpt_path: str | None) -> None:
        self._metrics = MetricStore()
        self._build_hook_table(model)
        self.should_stop = False
        model.to(self.root_device)
        self.training = True
        self._call("setup", stage="fit")
        self.strategy.wrap(model)
        self._setup_optimizers(model)
        resume = self._load_for_resume(ckpt_path) if ckpt_path is not None else None
        if resume is not None:
            self._restore(resume)
        self._call("on_fit_start")
        log_hyperparams_at_fit_start(self)  # after on_fit_start, as Lightning
        model.zero_grad()  # gradients left from before fit must not leak into the first step

        if val_loader is None and _overrides(model, LightningModule, "validation_step") and self.limit_val_batches != 0:
            if _overrides(model, LightningModule, "val_dataloader"):
                self._current_fx = "val_dataloader"
                val_loader = model.val_dataloader()
                self._current_fx = None
        if val_loader is not None:
            val_loader = self.strategy.process_loader(val_loader, shuffle_default=False)
        self._val_loader = val_loader
        self.enable_validation = (
            val_loader is not None and _overrides(model, LightningModule, "validation_step") and self.limit_val_batches != 0
        )
        if self.enable_validation:
            self.num_val_batches = self._num_batches(val_loader, self.limit_val_batches)
            if self.num_sanity_val_steps != 0:
                steps = self.num_val_batches if self.num_sanity_val_steps == -1 else min(self.num_sanity_val_steps, self.num_val_batches)
                with _isolated_rng():
                    self._run_validation(steps, sanity=True)
                self._metrics = MetricStore()
        if resume is not None:  # after the sanity check, which starts the metrics afresh
            self._metrics.load_state_dict(resume["metrics"], model)
        self._metrics.active = self._metrics.train  # on_train_start / on_train_epoch_start may log

        if train_loader is None:
            self._current_fx = "train_dataloader"
            train_loader = model.train_dataloader()
            self._current_fx = None
        train_loader = self.strategy.process_loader(train_loader, shuffle_default=True)
        self._train_loader = train_loader
        self._run_training(model, train_loader, resume)
        self._call("on_fit_end")
        self._call("teardown", stage="fit")
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
        self._before_update = {id(o): self._make_before_update(o) for o in self.optimizers}

    # -- the training loop --------------------------------------------------------------------------
    def _set_sampler_epoch(self, loader: Any) -> None:
        for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.current_epoch)

    def _new_iterator(self, loader: Any) -> Any:
        it = iter(loader)
        return it if self.num_training_batches != float("inf") else _Lookahead(it)

    def _should_accumulate(self) -> bool:
        ready = self.batch_idx + 1
        done = ready % self.accumulate_grad_batches == 0
        final = ready == self.num_training_batches or self.is_last_batch
        return not done and not final

    def _run_training(self, model: LightningModule, loader: Any, resume: dict[str, Any] | None) -> None:
        self.num_training_batches = self._num_batches(loader, self.limit_train_batches)
        if self.num_training_batches == 0:
            return
        if isinstance(self.val_check_interval, int):
            self.val_check_batch = self.val_check_interval
            if (self.val_check_batch > self.num_training_batches and self.check_val_every_n_epoch is not None
                    and self.enable_validation):
                raise ValueError(
                    f"`val_check_interval` ({self.val_check_interval}) must be less than or equal to the number of "
                    f"the training batches ({self.num_training_batches})."
                )
        elif self.num_training_batches == float("inf"):
            if self.val_check_interval != 1.0:
                raise MisconfigurationException(
                    "With a train loader without a length, `val_check_interval` must be 1.0 or an int"
                )
            self.val_check_batch = float("inf")
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * self.val_check_interval))

        # The first epoch's iterator is made before on_train_start, later ones after
        # on_train_epoch_start: the same points as Lightning, so the RNG draws line up.
        first = resume is None
        if first:
            self._epoch_rng = rng_state()
            iterator = self._new_iterator(loader)
        if self._fit_done():
            return
        self._call("on_train_start")
        if resume is not None:
            self._resume(model, loader, resume)
        while not self._fit_done():
            self._set_sampler_epoch(loader)
            self._call("on_train_epoch_start")
            if not first:
                self._epoch_rng = rng_state()
                iterator = self._new_iterator(loader)
            first = False
            self._run_epoch(model, iterator)
            self._end_epoch()
        self._loop_stage = "end"
        self._call("on_train_end")

    def _fit_done(self) -> bool:
        return (
            _max_reached(self.global_step, self.max_steps)
            or _max_reached(self._epochs_completed, self.max_epochs)
            or self.should_stop
        )

    def _run_epoch(self, model: LightningModule, iterator: Any, resume_tail: str | None = None) -> None:
        """One epoch's batches; `resume_tail` ("batch" or "validation") first finishes the batch a
        checkpoint was taken in, from that point."""
        if not resume_tail:
            self.batch_idx = -1
            self.is_last_batch = False
        automatic = model.automatic_optimization
        metrics = self._metrics
        metrics.active = metrics.train
        on_cpu = self.root_device.type == "cpu"
        step_fn = model.training_step
        pass_idx = _takes_batch_idx(step_fn)
        if resume_tail:
            self._batch_tail(automatic, after_validation=resume_tail == "validation")
        while True:
            if _max_reached(self.global_step, self.max_steps) or self._ready_batches_reached() or self.should_stop:
                break
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self.batch_idx += 1
            self._total_batch_idx += 1
            self._loop_stage = "in_batch"
            ready = self.batch_idx + 1
            self.is_last_batch = (
                iterator.done if isinstance(iterator, _Lookahead) else ready >= self.num_training_batches
            )
            if not on_cpu:
                batch = _move(batch, self.root_device)
            metrics.on_batch_start(batch)
            outputs: Any = None
            skip_rest = False
            if batch is None:
                warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning...", stacklevel=2)
            else:
                response = self._call("on_train_batch_start", batch, self.batch_idx)
                skip_rest = response == -1
                if skip_rest:
                    self.is_last_batch = True
                else:
                    args = (batch, self.batch_idx) if pass_idx else (batch,)
                    outputs = self._auto_batch(args) if automatic else self._manual_batch(args)
                    self._precision.end_iteration()
            if automatic:
                self._update_schedulers("step", plateau=False)
                if self._ready_batches_reached():
                    self._update_schedulers("epoch", plateau=False)
            if skip_rest:
                break
            self._call("on_train_batch_end", outputs, batch, self.batch_idx)
            metrics.on_batch_end()
            accumulating = self._should_accumulate()
            every = self.log_every_n_steps
            if self.loggers and every > 0 and not (accumulating and automatic) and (
                (self._batches_that_stepped + 1) % every == 0 or self.should_stop
            ):
                self._log_to_loggers(metrics.step_log_metrics())
            self._loop_point("batch")
            self._batch_tail(automatic)

    def _batch_tail(self, automatic: bool, after_validation: bool = False) -> None:
        """What follows a batch after its checkpoint point: validation when due (then another
        checkpoint point), plateau schedulers, the logging step counter. A resumed fit starts
        here."""
        accumulating = self._should_accumulate()
        if not after_validation and self._should_check_val():
            if not accumulating:
                self._call_module("on_validation_model_zero_grad")
            self._run_validation(self.num_val_batches, sanity=False)
            self._validation_has_run = True
            self._loop_point("validation")
        if automatic:
            self._update_schedulers("step", plateau=True)
        if not accumulating:
            self._batches_that_stepped += 1

    def _ready_batches_reached(self) -> bool:
        return self.batch_idx + 1 == self.num_training_batches or self.is_last_batch

    def _end_epoch(self) -> None:
        self._metrics.epoch_end_reached()
        self._loop_stage = "in_epoch_end"
        self._call("on_train_epoch_end")
        self._loop_point("epoch")
        self._finish_epoch()
        self._loop_stage = "between_epochs"

    def _finish_epoch(self) -> None:
        metrics = self._metrics
        metrics.active = metrics.train
        metrics.on_epoch_end()
        if self.lightning_module.automatic_optimization and self._ready_batches_reached():
            self._update_schedulers("epoch", plateau=True)
        self._batches_that_stepped -= 1
        if self.loggers:
            self._log_to_loggers(metrics.step_log_metrics())
        metrics.reset_results(metrics.train)
        self._batches_that_stepped += 1
        self._epochs_completed += 1

    # -- checkpoints -------------------------------------------------------------------------------
    def _loop_point(self, point: str) -> None:
        """The end of a batch ("batch"), of a validation run inside it ("validation"), or of an
        epoch after on_train_epoch_end ("epoch"): the places a checkpoint resumes from exactly.
        A checkpoint saved anywhere else records an approximate stage (see `_resume`)."""
        self._loop_stage = point
        for cb in self.checkpoint_callbacks:
            cb._on_loop_point(self, point)
        self._loop_stage = {"batch": "in_batch", "validation": "in_batch", "epoch": "in_epoch_end"}[point]

    def _checkpoint_dict(self, weights_only: bool = False) -> dict[str, Any]:
        if isinstance(self.strategy, FSDPStrategy):
            raise NotImplementedError("checkpoints under strategy='fsdp' are not built yet (sharded state)")
        model = self.lightning_module
        ckpt: dict[str, Any] = {
            "format": FORMAT,
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": model.state_dict(),
            **model._checkpoint_hparams(),  # "hyper_parameters" as plain data, and "hparams_name"
        }
        if not weights_only:
            ckpt.update(
                optimizer_states=[o.state_dict() for o in self.optimizers],
                lr_schedulers=[c.scheduler.state_dict() for c in self.lr_scheduler_configs],
                precision=self._precision.state_dict(),
                loops={
                    "stage": self._loop_stage, "epochs_completed": self._epochs_completed,
                    "manual_steps": self._manual_steps, "auto_steps": self._auto_steps,
                    "batches_that_stepped": self._batches_that_stepped, "total_batch_idx": self._total_batch_idx,
                    "val_batches_logged": self._val_batches_logged, "batch_idx": self.batch_idx,
                    "is_last_batch": self.is_last_batch, "epoch_rng": self._epoch_rng,
                },
                metrics=self._metrics.state_dict(),
                rng=rng_state(),
                callbacks={f"ModelCheckpoint[{i}]": cb.state_dict() for i, cb in enumerate(self.checkpoint_callbacks)},
            )
        prev = self._current_fx
        self._current_fx = "on_save_checkpoint"
        try:
            model.on_save_checkpoint(ckpt)
        finally:
            self._current_fx = prev
        return ckpt

    def save_checkpoint(self, filepath: str | os.PathLike, weights_only: bool = False) -> None:
        """Write a checkpoint of the current state to `filepath` (atomically). `weights_only`:
        the model only, no optimizer, scheduler or loop state (such a file cannot resume a fit)."""
        if self.lightning_module is None or not self.optimizers and not weights_only:
            raise RuntimeError("save_checkpoint() needs a model that has been fitted (or is being fitted)")
        ckpt = self._checkpoint_dict(weights_only)
        if self.is_global_zero:  # the DDP ranks hold the same state: one writes, all wait
            save_atomic(ckpt, os.fspath(filepath))
        self.strategy.barrier()

    def _load_for_resume(self, ckpt_path: str | os.PathLike) -> dict[str, Any] | None:
        path = os.fspath(ckpt_path)
        if path == "last":
            candidates = [
                os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
                for cb in self.checkpoint_callbacks if cb.dirpath
            ]
            found = [c for c in candidates if os.path.isfile(c)]
            if not found:
                warnings.warn(
                    '.fit(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will '
                    "be loaded.",
                    stacklevel=4,
                )
                return None
            path = max(found, key=os.path.getmtime)
        ckpt = load_checkpoint(path)
        if "loops" not in ckpt:
            raise ValueError(f"{path!r} was saved with weights_only=True: it has no training state to resume from")
        if len(ckpt["optimizer_states"]) != len(self.optimizers) or len(ckpt["lr_schedulers"]) != len(
            self.lr_scheduler_configs
        ):
            raise ValueError(
                f"{path!r} holds {len(ckpt['optimizer_states'])} optimizer(s) and {len(ckpt['lr_schedulers'])} "
                f"scheduler(s); configure_optimizers gave {len(self.optimizers)} and {len(self.lr_scheduler_configs)}"
            )
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Everything but the metrics (loaded after the sanity check) and the RNG (set by
        `_resume` once the data order is rebuilt)."""
        model = self.lightning_module
        model.load_state_dict(ckpt["state_dict"])
        model.on_load_checkpoint(ckpt)
        for opt, state in zip(self.optimizers, ckpt["optimizer_states"]):
            opt.load_state_dict(state)
        for config, state in zip(self.lr_scheduler_configs, ckpt["lr_schedulers"]):
            config.scheduler.load_state_dict(state)
        self._precision.load_state_dict(ckpt["precision"])
        loops = ckpt["loops"]
        self._epochs_completed = loops["epochs_completed"]
        self._manual_steps, self._auto_steps = loops["manual_steps"], loops["auto_steps"]
        self._batches_that_stepped = loops["batches_that_stepped"]
        self._total_batch_idx = loops["total_batch_idx"]
        self._val_batches_logged = loops["val_batches_logged"]
        self.batch_idx, self.is_last_batch = loops["batch_idx"], loops["is_last_batch"]
        self._epoch_rng = loops["epoch_rng"]
        saved = ckpt.get("callbacks", {})
        for i, cb in enumerate(self.checkpoint_callbacks):
            if f"ModelCheckpoint[{i}]" in saved:
                cb.load_state_dict(saved[f"ModelCheckpoint[{i}]"])

    def _resume(self, model: LightningModule, loader: Any, ckpt: dict[str, Any]) -> None:
        """Carry on from where the checkpoint was taken: the rest of that batch or epoch."""
        stage = ckpt["loops"]["stage"]
        if stage in ("in_batch", "in_epoch_end"):
            warnings.warn(
                f"The checkpoint was saved from inside the loop ({stage}), not at a resume point: the fit "
                "resumes after that batch or epoch, which may repeat or skip hooks run after the save.",
                stacklevel=4,
            )
        if stage in ("batch", "in_batch", "validation"):
            # Rebuild the epoch's order from the RNG it started with, skip what was done, then take
            # up the RNG where the checkpoint left it.
            self._set_sampler_epoch(loader)
            set_rng_state(self._epoch_rng)
            iterator = self._new_iterator(loader)
            for _ in range(self.batch_idx + 1):
                next(iterator)
            set_rng_state(ckpt["rng"])
            self._metrics.active = self._metrics.train
            self._run_epoch(model, iterator, resume_tail="validation" if stage == "validation" else "batch")
            self._end_epoch()
        elif stage in ("epoch", "in_epoch_end"):
            set_rng_state(ckpt["rng"])
            self._metrics.active = self._metrics.train
            self._finish_epoch()
        else:  # saved before training started, between epochs, or after it ended
            set_rng_state(ckpt["rng"])

    def _rank_zero_loggers(self) -> list[Logger]:
        return self.loggers if self.is_global_zero else []

    def _log_to_loggers(self, logged: Mapping[str, torch.Tensor], step: int | None = None) -> None:
        if not logged or not self.loggers or not self.is_global_zero:
            return
        scalars = to_scalars(logged)
        if step is None:
            scalars.setdefault("epoch", self.current_epoch)
            step = self._batches_that_stepped
        for lg in self.loggers:
            lg.log_metrics(scalars, step)
            lg.save()

    def _auto_batch(self, args: tuple) -> dict[str, Any]:
        wrapper = self._lightning_optimizers[0]
        closure = _AutomaticClosure(self, args, wrapper)
        if self._should_accumulate():
            with self.strategy.block_grad_sync(True):  # no all-reduce until the stepping batch
                closure()
        else:
            self._call_module("optimizer_step", self.current_epoch, self.batch_idx, wrapper, closure)
            self._auto_steps += 1
        return closure.outputs

    def _count_step(self) -> None:
        self._manual_steps += 1

    def _manual_batch(self, args: tuple) -> dict[str, Any]:
        wrappers = self._lightning_optimizers
        for w in wrappers:
            w._on_after_step = self._count_step
        try:
            self._current_fx = "training_step"
            with self._precision.forward_context():
                out = self.strategy.training_step(self.lightning_module, args)
        finally:
            self._current_fx = None
            for w in wrappers:
                w._on_after_step = None
        if out is None:
            return {}
        if isinstance(out, torch.Tensor):
            return {"loss": out}
        if isinstance(out, Mapping):
            return dict(out)
        raise MisconfigurationException(
            "In manual optimization, `training_step` must either return a Tensor or have no return "
            f"(a Mapping is also accepted); it returned {type(out).__name__}."
        )

    def _update_schedulers(self, interval: str, plateau: bool) -> None:
        if not self.lr_scheduler_configs:
            return
        if interval == "step" and self._should_accumulate():
            return
        for config in self.lr_scheduler_configs:
            if plateau != config.reduce_on_plateau or config.interval != interval:
                continue
            idx = (self.batch_idx if interval == "step" else self.current_epoch) + 1
            if idx % config.frequency != 0:
                continue
            monitor_val = None
            if config.reduce_on_plateau:
                monitor_val = self.callback_metrics.get(config.monitor)
                if monitor_val is None:
                    if config.strict:
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. "
                            f"Available metrics are: {list(self.callback_metrics)}. Condition can be set using "
                            "`monitor` key in lr scheduler dict"
                        )
                    warnings.warn(
                        f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available but strict "
                        "is set to `False`. Skipping learning rate update.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
            self._call_module("lr_scheduler_step", config.scheduler, monitor_val)

    def _should_check_val(self) -> bool:
        if not self.enable_validation:
            return False
        if self.check_val_every_n_epoch is not None and (self.current_epoch + 1) % self.check_val_every_n_epoch != 0:
            return False
        infinite = self.val_check_batch == float("inf")
        if self.is_last_batch and infinite:
            return True
        if self.should_stop:
            return True
        if isinstance(self.limit_train_batches, int) and infinite:
            return (self.batch_idx + 1) % self.limit_train_batches == 0
        if not infinite:
            current = self._total_batch_idx if self.check_val_every_n_epoch is None else self.batch_idx
            return (current + 1) % self.val_check_batch == 0
        return self.is_last_batch

    # -- validation --------------------------------------------------------------------------------
    def _run_validation(self, limit: int | float, sanity: bool) -> None:
        model = self.lightning_module
        metrics = self._metrics
        saved_active, saved_first = metrics.active, metrics.first_loop_iter
        metrics.active = metrics.val
        metrics.reset_results(metrics.val)
        self.sanity_checking = sanity
        if sanity:
            self._call("on_sanity_check_start")
        # The sanity check is neither training nor validating, as in Lightning.
        self.training, self.validating = False, not sanity
        step_fn = model.validation_step
        pass_idx = _takes_batch_idx(step_fn)
        modes = {m: m.training for m in model.modules()}
        self._call_module("on_validation_model_eval")
        try:
            with torch.no_grad():
                self._call("on_validation_start")
                self._call("on_validation_epoch_start")
                if limit:
                    it = iter(self._val_loader)
                    batch_idx = 0
                    while batch_idx < limit:
                        try:
                            batch = next(it)
                        except StopIteration:
                            break
                        if self.root_device.type != "cpu":
                            batch = _move(batch, self.root_device)
                        metrics.on_batch_start(batch)
                        self._call("on_validation_batch_start", batch, batch_idx)
                        self._current_fx = "validation_step"
                        try:
                            with self._precision.forward_context():
                                out = step_fn(batch, batch_idx) if pass_idx else step_fn(batch)
                        finally:
                            self._current_fx = None
                        self._call("on_validation_batch_end", out, batch, batch_idx)
                        if not sanity:
                            step_logs = metrics.val.metrics(on_step=True)[1]
                            if step_logs:
                                self._log_to_loggers(step_logs, step=self._val_batches_logged)
                            self._val_batches_logged += 1
                        metrics.on_batch_end()
                        batch_idx += 1
                metrics.epoch_end_reached()
                self._call("on_validation_epoch_end")
                if not sanity:
                    self._log_to_loggers(metrics.on_epoch_end())
                self._call("on_validation_end")
                metrics.reset_results(metrics.val)  # logged Metric objects reset after each run, as Lightning
        finally:
            self._call_module("on_validation_model_train")
            for m, training in modes.items():  # each submodule back to its own mode
                m.training = training
            metrics.active, metrics.first_loop_iter = saved_active, saved_first
        # Not in the `finally`: a failure inside leaves the stage as it was for on_exception, as in Lightning.
        self.training, self.validating = not sanity, False
        if sanity:
            self._call("on_sanity_check_end")
        self.sanity_checking = False
        self.training = True


def _plain(value: Any) -> Any:
    """`value` if it is plain data (what a weights_only load accepts), else None."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(i is not None or v is None for i, v in zip(items, value)) else None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if isinstance(k, str) and (_plain(v) is not None or v is None)}
    return None


class _AutomaticClosure:
    """training_step → zero_grad (first batch of an accumulation window) → backward, as the
    closure that `optimizer.step` calls (LBFGS may call it several times)."""

    __slots__ = ("trainer", "args", "wrapper", "outputs")

    def __init__(self, trainer: Trainer, args: tuple, wrapper: LightningOptimizer) -> None:
        self.trainer = trainer
        self.args = args
        self.wrapper = wrapper
        self.outputs: dict[str, Any] = {}

    def __call__(self) -> torch.Tensor | None:
        trainer = self.trainer
        module = trainer.lightning_module
        trainer._current_fx = "training_step"
        try:
            with trainer._precision.forward_context():
                out = trainer.strategy.training_step(module, self.args)
        finally:
            trainer._current_fx = None
        if out is None:
            loss, extra = None, {}
        elif isinstance(out, torch.Tensor):
            loss, extra = out, {}
        elif isinstance(out, Mapping):
            if "loss" not in out:
                raise MisconfigurationException(
                    "In automatic_optimization, when `training_step` returns a dict, the 'loss' key needs to be present"
                )
            loss, extra = out["loss"], {k: v for k, v in out.items() if k != "loss"}
        else:
            raise MisconfigurationException(
                "In automatic optimization, `training_step` must return a Tensor, a dict, or None (where the step "
                "will be skipped)."
            )
        n = trainer.accumulate_grad_batches
        if loss is not None and n > 1:
            loss = loss / n
        if trainer.batch_idx % n == 0:
            trainer._call("on_before_zero_grad", self.wrapper._optimizer)
            trainer._call_module("optimizer_zero_grad", trainer.current_epoch, trainer.batch_idx, self.wrapper._optimizer)
        if loss is not None:
            trainer._backward(loss, self.wrapper)
            detached = loss.detach()
            self.outputs = {"loss": detached, **extra}
            return detached
        self.outputs = {}
        return None

