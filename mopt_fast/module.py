"""mopt_fast.LightningModule: the module API of Lightning 2.6, driven by mopt_fast.Trainer.

Everything a `training_step` reaches (`self.optimizers()`, `self.manual_backward`,
`self.clip_gradients`, `self.log`, `self.toggle_optimizer`, ...) is a thin call into the Trainer,
which runs it on the fused kernels. The hooks are no-ops to override; the Trainer only calls the
ones a module or callback overrides.
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.hooks import EvaluationModelHooks
from mopt_fast.optimizer import LightningOptimizer, validate_clip_args

if TYPE_CHECKING:
    from mopt_fast.trainer._protocol import ModuleTrainer

__all__ = ["LightningModule"]


class _AttributeDict(dict):
    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class LightningModule(EvaluationModelHooks, torch.nn.Module):
    """A torch.nn.Module with Lightning's training API. Subclass it, set
    ``self.automatic_optimization = False`` for manual optimization, and fit it with
    `mopt_fast.Trainer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._automatic_optimization = True
        self._trainer: ModuleTrainer | None = None
        self._param_requires_grad_state: dict[torch.Tensor, bool] = {}
        self._hparams = _AttributeDict()

    # -- state ------------------------------------------------------------------------------
    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def trainer(self) -> ModuleTrainer:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a `Trainer`.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: ModuleTrainer | None) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        if self._trainer is not None:
            return self._trainer.root_device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def hparams(self) -> _AttributeDict:
        return self._hparams

    def save_hyperparameters(self, *args: str, ignore: str | list[str] | None = None) -> None:
        """Store the caller's ``__init__`` arguments (or the named ones) in ``self.hparams``."""
        frame = inspect.currentframe().f_back
        init_args = {k: v for k, v in frame.f_locals.items() if k not in ("self", "__class__") and not k.startswith("_")}
        sig = inspect.signature(type(self).__init__)
        init_args = {k: v for k, v in init_args.items() if k in sig.parameters}
        if args:
            init_args = {k: init_args[k] for k in args}
        ignored = [ignore] if isinstance(ignore, str) else (ignore or [])
        self._hparams.update({k: v for k, v in init_args.items() if k not in ignored})

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs)

    # -- optimizers ---------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from `configure_optimizers`: one object when there is one, else a list.
        Wrapped in `LightningOptimizer` unless `use_pl_optimizer=False`."""
        trainer = self.trainer
        opts = trainer._lightning_optimizers if use_pl_optimizer else trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """None, one scheduler, or a list of them (the bare torch schedulers)."""
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        schedulers = [c.scheduler for c in configs]
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Use instead of ``loss.backward()`` in manual optimization: runs the backward hooks and
        the precision plugin's loss scaling."""
        if self._automatic_optimization:
            raise RuntimeError(
                "to use manual_backward, please disable automatic optimization: "
                "set model property `automatic_optimization = False`"
            )
        self.trainer._backward(loss, None, *args, **kwargs)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Hook: how a (scaled) loss is back-propagated."""
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> None:
        """Make only `optimizer`'s parameters require grad: parameters that belong only to other
        optimizers get ``requires_grad=False``; the states are restored by `untoggle_optimizer`.
        Parameters frozen by the user stay frozen."""
        state: dict[torch.Tensor, bool] = {}
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p not in state:
                        state[p] = p.requires_grad
                        p.requires_grad = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.requires_grad = state[p]
        self._param_requires_grad_state = state

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> None:
        """Restore the ``requires_grad`` states saved by `toggle_optimizer`."""
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        for opt in self.trainer.optimizers:
            if opt is raw:
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    if p in self._param_requires_grad_state:
                        p.requires_grad = self._param_requires_grad_state[p]
        self._param_requires_grad_state = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: torch.optim.Optimizer | LightningOptimizer) -> Generator[None, None, None]:
        """`toggle_optimizer` for the duration of a ``with`` block."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip `optimizer`'s gradients by norm (default) or value, on the fused kernels. Values
        not given come from the Trainer; giving one that conflicts with the Trainer's is an error;
        a value ≤ 0 does nothing."""
        trainer = self.trainer
        if gradient_clip_val is None:
            gradient_clip_val = trainer.gradient_clip_val or 0.0
        elif trainer.gradient_clip_val is not None and trainer.gradient_clip_val != gradient_clip_val:
            raise MisconfigurationException(
                f"You have set `Trainer(gradient_clip_val={trainer.gradient_clip_val!r})` and have passed "
                f"`clip_gradients(gradient_clip_val={gradient_clip_val!r})`. Please use only one of them."
            )
        if gradient_clip_algorithm is None:
            gradient_clip_algorithm = trainer.gradient_clip_algorithm or "norm"
        else:
            if not isinstance(gradient_clip_algorithm, str):
                raise MisconfigurationException(f"`gradient_clip_algorithm` {gradient_clip_algorithm!r} is invalid.")
            gradient_clip_algorithm = gradient_clip_algorithm.lower()
            if trainer.gradient_clip_algorithm is not None and trainer.gradient_clip_algorithm != gradient_clip_algorithm:
                raise MisconfigurationException(
                    f"You have set `Trainer(gradient_clip_algorithm={trainer.gradient_clip_algorithm!r})` and have "
                    f"passed `clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r})`. "
                    "Please use only one of them."
                )
        clip_val, algorithm = validate_clip_args(gradient_clip_val, gradient_clip_algorithm)
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        trainer._precision.clip_gradients(raw, clip_val, algorithm)

    # -- logging ------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log a scalar (a number or a one-element tensor) under `name`; see Lightning's
        `LightningModule.log`. Reductions: "mean" (weighted by batch size), "sum", "max", "min"."""
        if isinstance(value, Mapping):
            raise ValueError(f"`self.log({name}, {value})` was called, but nested dictionaries cannot be logged")
        if not isinstance(value, (torch.Tensor, numbers.Number)):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
        if self._trainer is None:
            warnings.warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model yet.",
                stacklevel=2,
            )
            return
        if sync_dist_group is not None or metric_attribute is not None:
            raise NotImplementedError(
                "self.log(sync_dist_group=..., metric_attribute=...) is not supported by mopt_fast.Trainer yet"
            )
        self._trainer._metrics.log(
            self._trainer, name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
            reduce_fx=reduce_fx, enable_graph=enable_graph, batch_size=batch_size, sync_dist=sync_dist,
            add_dataloader_idx=add_dataloader_idx,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """`log` for every item of `dictionary`."""
        for k, v in dictionary.items():
            self.log(
                k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only,
            )

    # -- what the user implements ------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("`training_step` must be implemented to be used with the Trainer")

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        pass

    def configure_optimizers(self) -> Any:
        raise NotImplementedError("`configure_optimizers` must be implemented to be used with the Trainer")

    def train_dataloader(self) -> Any:
        raise NotImplementedError("`train_dataloader` must be implemented, or a dataloader passed to `fit`")

    def val_dataloader(self) -> Any:
        raise NotImplementedError("`val_dataloader` must be implemented, or a dataloader passed to `fit`")

    # -- automatic-optimization hooks -------------------------------------------------------
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Called before each optimizer step in automatic optimization only."""
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- hooks (no-ops) -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to (or edit) a checkpoint before it is written; plain data and tensors only."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what `on_save_checkpoint` added, when a fit resumes from the checkpoint."""

    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        self.eval()

    def on_validation_model_train(self) -> None:
        # The Trainer then puts each submodule back in the mode it had before validation.
        self.train()
