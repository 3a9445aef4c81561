"""mopt_fast.LightningModule: the module API of Lightning 2.6, driven by mopt_fast.Trainer.

Everything a `training_step` reaches (`self.optimizers()`, `self.manual_backward`,
`self.clip_gradients`, `self.log`, `self.toggle_optimizer`, ...) is a thin call into the Trainer,
which runs it on the fused kernels. The hooks are no-ops to override; the Trainer only calls the
ones a module or callback overrides.

Hyperparameters follow Lightning: `save_hyperparameters()` collects the ``__init__`` arguments of
every class in the module's hierarchy whose ``__init__`` is on the call stack (so a subclass keeps
its parents' arguments), `hparams` is an `AttributeDict`, `hparams_initial` a frozen copy; a
checkpoint stores them under ``"hyper_parameters"`` and `load_from_checkpoint` passes them back to
``__init__``.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Generator, Mapping
from typing import IO, TYPE_CHECKING, Any

import torch

from mopt_fast.core.hooks import DataHooks, ModelHooks
from mopt_fast.core.hparams import HyperparametersMixin, _build_from_checkpoint, _restricted_classmethod
from mopt_fast.core.optimizer import LightningOptimizer, validate_clip_args
from mopt_fast.core.saving import AttributeDict, _read_checkpoint
from mopt_fast.exceptions import MisconfigurationException, not_built

if TYPE_CHECKING:
    from mopt_fast.core.protocol import ModuleTrainer

__all__ = ["AttributeDict", "LightningModule"]

# Lightning's error for a module without one of these (it checks before fit starts; here the base
# method raises it when the Trainer calls it).
_MINIMUM = (
    "No `{}()` method defined. Lightning `Trainer` expects as minimum a `training_step()`, `train_dataloader()` "
    "and `configure_optimizers()` to be defined."
)


# -- load_from_checkpoint -----------------------------------------------------------------------
def _load_state(cls: type, checkpoint: dict[str, Any], strict: bool | None = None, **cls_kwargs_new: Any) -> Any:
    """An instance of `cls` built from the checkpoint's hyperparameters (`cls_kwargs_new` win),
    given the checkpoint's weights; Lightning's `_load_state`."""
    obj = _build_from_checkpoint(cls, checkpoint, cls_kwargs_new)

    if obj._strict_loading is not None and strict is not None and strict != obj.strict_loading:
        raise ValueError(
            f"You set `.load_from_checkpoint(..., strict={strict!r})` which is in conflict with"
            f" `{cls.__name__}.strict_loading={obj.strict_loading!r}. Please set the same value for both of them."
        )
    strict = obj.strict_loading if strict is None else strict
    configure_model = getattr(obj, "configure_model", None)
    if callable(configure_model):
        configure_model()
    obj.on_load_checkpoint(checkpoint)
    keys = obj.load_state_dict(checkpoint["state_dict"], strict=strict)
    if not strict:
        if keys.missing_keys:
            warnings.warn(
                f"Found keys that are in the model state dict but not in the checkpoint: {keys.missing_keys}",
                stacklevel=4,
            )
        if keys.unexpected_keys:
            warnings.warn(
                f"Found keys that are not in the model state dict but in the checkpoint: {keys.unexpected_keys}",
                stacklevel=4,
            )
    return obj


class LightningModule(HyperparametersMixin, ModelHooks, DataHooks, torch.nn.Module):
    """A torch.nn.Module with Lightning's training API. Subclass it, set
    ``self.automatic_optimization = False`` for manual optimization, and fit it with
    `mopt_fast.Trainer`."""

    # torch.jit.script(model) skips these properties (Lightning's list, plus the ones of its
    # device/dtype and hyperparameter mixins): they read the Trainer or Python-only state.
    __jit_unused_properties__: list[str] = [
        "example_input_array", "on_gpu", "current_epoch", "global_step", "global_rank", "local_rank", "logger",
        "loggers", "automatic_optimization", "trainer", "fabric", "strict_loading", "device_mesh", "device", "dtype",
        *HyperparametersMixin.__jit_unused_properties__,
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._automatic_optimization = True
        self._trainer: ModuleTrainer | None = None
        self._param_requires_grad_state: dict[torch.Tensor, bool] = {}
        self._example_input_array: Any = None
        self._strict_loading: bool | None = None
        self._metric_attributes: dict[int, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trainer"] = None  # a pickled (or deep-copied) module leaves its trainer behind
        return state

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
        # LightningModules nested as direct children follow (and theirs in turn), as in Lightning.
        for child in self.children():
            if isinstance(child, LightningModule):
                child.trainer = trainer
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        if self._trainer is not None:
            return self._trainer.root_device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (or buffer), else the default dtype."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """The index of this process across all nodes and devices (0 without a Trainer)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """The index of this process on its node (0 without a Trainer)."""
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        """The Trainer's first logger (None without a Trainer or a logger)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """The Trainer's loggers ([] without a Trainer)."""
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def example_input_array(self) -> Any:
        """An input for ``forward``: a tensor (one argument), a tuple (positional ones) or a dict
        (keyword ones); TensorBoardLogger(log_graph=True) traces the model with it."""
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def strict_loading(self) -> bool:
        """Whether `load_from_checkpoint` loads the weights with ``strict=True`` (the default)."""
        return self._strict_loading in (None, True)

    @strict_loading.setter
    def strict_loading(self, strict_loading: bool) -> None:
        self._strict_loading = strict_loading

    def freeze(self) -> LightningModule:
        """Every parameter stops requiring grad, and the module goes to eval mode; returns it."""
        for param in self.parameters():
            param.requires_grad = False
        return self.eval()

    def unfreeze(self) -> LightningModule:
        """Every parameter requires grad again, and the module goes to train mode; returns it."""
        for param in self.parameters():
            param.requires_grad = True
        return self.train()

    # -- the batch-transfer hooks, as Lightning's utilities call them (ModelSummary, log_graph) --------
    def _call_batch_hook(self, name: str, *args: Any) -> Any:
        """The hook `name` of the data module or of this module, as the Trainer picks it during a
        run; this module's own without a Trainer."""
        if self._trainer is not None:
            return self._trainer.call_batch_hook(name, *args)
        return getattr(self, name)(*args)

    def _on_before_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        return self._call_batch_hook("on_before_batch_transfer", batch, dataloader_idx)

    def _apply_batch_transfer_handler(self, batch: Any, device: torch.device | str | None = None,
                                      dataloader_idx: int = 0) -> Any:
        """`transfer_batch_to_device` (to `device`, default this module's) then `on_after_batch_transfer`."""
        device = torch.device(device) if isinstance(device, str) else (device or self.device)
        batch = self._call_batch_hook("transfer_batch_to_device", batch, device, dataloader_idx)
        return self._call_batch_hook("on_after_batch_transfer", batch, dataloader_idx)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only (through the progress bar when it has a `print`)."""
        trainer = self.trainer
        if trainer.is_global_zero:
            bar = trainer.progress_bar_callback
            if bar is not None and getattr(bar, "is_enabled", False) and hasattr(bar, "print"):
                bar.print(*args, **kwargs)
            else:
                print(*args, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------------
    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new instance of this class from a checkpoint: ``__init__`` gets the hyperparameters the
        checkpoint stores (``"hyper_parameters"``; `kwargs` override or add to them), then the
        weights are loaded and the model goes to the device of the first saved tensor.

        Args:
            checkpoint_path: a file written by `Trainer.save_checkpoint` or `ModelCheckpoint` (of
                mopt_fast or Lightning), a file object, or a URL as Lightning takes it: http(s)
                (through torch.hub's download cache) or any fsspec protocol ("s3://", "memory://",
                "file://", ...; fsspec must be installed).
            map_location: as for `torch.load`; by default tensors go back to the device they were
                saved from, or to the CPU when this machine lacks it.
            hparams_file: a ``.yaml`` / ``.yml`` or ``.csv`` file of hyperparameters to use instead of
                the checkpoint's.
            strict: whether the checkpoint's keys must match the model's (default: `strict_loading`).
            weights_only: passed to `torch.load`. None: True, torch's default, which Lightning 2.6
                keeps for files (for http(s) URLs Lightning uses False; here they get True too).
                ``weights_only=True`` reads only tensors and plain data, so opening a file cannot run
                code; it refuses a checkpoint holding pickled objects (a hyperparameter that is an
                ``nn.Module``, which both Trainers pickle) with an UnpicklingError. False reads those,
                by unpickling, which runs whatever code the file carries: only for trusted files.
            **kwargs: ``__init__`` arguments, over the stored hyperparameters.
        """
        if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
            raise NotImplementedError(f"Unsupported {cls}")
        checkpoint = _read_checkpoint(checkpoint_path, map_location, weights_only, hparams_file)
        checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
        checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY].update(kwargs)
        model = _load_state(cls, checkpoint, strict=strict, **kwargs)
        state_dict = checkpoint["state_dict"]
        if not state_dict:
            warnings.warn(f"The state dict in {checkpoint_path!r} contains no parameters.", stacklevel=2)
            return model
        device = next((t for t in state_dict.values() if isinstance(t, torch.Tensor)), torch.tensor(0)).device
        return model.to(device)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_onnx", "export with torch.onnx.export(model, ...)")

    def to_torchscript(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_torchscript", "use torch.export.export(model, ...) (or torch.jit)")

    def to_tensorrt(self, *args: Any, **kwargs: Any) -> Any:
        raise not_built("LightningModule.to_tensorrt")

    # -- optimizers ---------------------------------------------------------------------------
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizers from `configure_optimizers`: one object when there is one, else a list.
        Wrapped in `LightningOptimizer` unless `use_pl_optimizer=False`."""
        trainer = self.trainer
        opts = trainer.lightning_optimizers if use_pl_optimizer else trainer.optimizers
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
        self.trainer.run_backward(loss, None, *args, **kwargs)

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
        assert clip_val is not None and algorithm is not None  # both were set above
        raw = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        trainer.precision_plugin.clip_gradients(raw, clip_val, algorithm)

    # -- logging ------------------------------------------------------------------------------
    def _find_metric_attribute(self, metric: Any, name: str) -> str:
        """The attribute name (in `named_modules`) of a logged torchmetrics.Metric, or Lightning's error."""
        cls = metric_class()
        assert cls is not None  # `metric` is a torchmetrics.Metric: torchmetrics is imported
        if self._metric_attributes is None or id(metric) not in self._metric_attributes:
            # looked up again on a miss: a metric assigned after the first log is found too
            self._metric_attributes = {id(m): n for n, m in self.named_modules() if isinstance(m, cls)}
            if not self._metric_attributes:
                raise MisconfigurationException(
                    "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                    " You can fix this by setting an attribute for the metric in your `LightningModule`."
                )
        attribute = self._metric_attributes.get(id(metric))
        if attribute is None:
            raise MisconfigurationException(
                "Could not find the `LightningModule` attribute for the `torchmetrics.Metric` logged."
                f" You can fix this by calling `self.log({name}, ..., metric_attribute=name)` where `name` is one"
                f" of {list(self._metric_attributes.values())}"
            )
        return attribute

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log `value` (a number, a one-element tensor, or a `torchmetrics.Metric` attribute of the
        module) under `name`; see Lightning's `LightningModule.log`. `reduce_fx`: "mean" (weighted
        by batch size), "sum", "max", "min", or torch's / Python's functions of those names. A
        Metric's step value is its last forward's result, its epoch value `compute()`; it is reset
        at the end of the epoch. `sync_dist`: a tensor is reduced over the ranks of `sync_dist_group`
        (a torch.distributed group; None: all ranks), "mean" dividing by the group's size."""
        if isinstance(value, Mapping):
            raise ValueError(f"`self.log({name}, {value})` was called, but nested dictionaries cannot be logged")
        if not isinstance(value, (torch.Tensor, numbers.Number)) and not is_metric(value):
            raise ValueError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged"
            )
        trainer = self._trainer
        if trainer is None:
            warnings.warn(
                "You are trying to `self.log()` but the `self.trainer` reference is not registered on the model yet."
                " This is most likely because the model hasn't been passed to the `Trainer`",
                stacklevel=2,
            )
            return
        if trainer.barebones:
            warnings.warn(
                "You are trying to `self.log()` but `Trainer(barebones=True)` is configured."
                " Logging can impact raw speed so it is disabled under this setting.",
                stacklevel=2,
            )
            return
        if trainer.lightning_module is not self:
            # A LightningModule nested in the fitted one runs no hooks of its own (Lightning: its
            # `_current_fx_name` is never set).
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow"
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}`"
                " but it should not contain information about `dataloader_idx` when `add_dataloader_idx=True`"
            )
        distributed = trainer.world_size > 1
        if is_metric(value) and metric_attribute is None:
            metric_attribute = self._find_metric_attribute(value, name)
        trainer.metric_store.log(
            trainer, name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
            reduce_fx=reduce_fx, enable_graph=enable_graph, batch_size=batch_size,
            sync_dist=sync_dist and distributed and not rank_zero_only, metric_attribute=metric_attribute,
            add_dataloader_idx=add_dataloader_idx, sync_dist_group=sync_dist_group,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """`log` for every item of `dictionary` (a dict, or a torchmetrics.MetricCollection: each
        of its metrics under its own name)."""
        items_kwargs: dict[str, bool] = {}
        collection = getattr(sys.modules.get("torchmetrics"), "MetricCollection", None)
        if collection is not None and isinstance(dictionary, collection):
            items_kwargs["keep_base"] = False
            if dictionary._enable_compute_groups:
                items_kwargs["copy_state"] = False
        for k, v in dictionary.items(**items_kwargs):
            self.log(
                k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                enable_graph=enable_graph, sync_dist=sync_dist, sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx, batch_size=batch_size, rank_zero_only=rank_zero_only,
            )

    # -- what the user implements ------------------------------------------------------------
    def configure_callbacks(self) -> Any:
        """Callbacks this model brings (one or a sequence): at every fit/validate/test/predict they
        replace the Trainer's callbacks of their type (or of a parent type), checkpoint callbacks
        last, as in Lightning."""
        return []

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(_MINIMUM.format("training_step"))

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        pass

    def configure_optimizers(self) -> Any:
        """Return the optimizer(s) and scheduler(s): one of the six forms Lightning accepts, or None
        (the fit then runs without an optimizer, as in Lightning). Must be overridden."""
        raise MisconfigurationException(_MINIMUM.format("configure_optimizers"))

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


def metric_class() -> type | None:
    """torchmetrics.Metric when torchmetrics has been imported (a Metric can exist only then), else
    None: torchmetrics stays an optional dependency that mopt_fast never imports itself."""
    module = sys.modules.get("torchmetrics")
    return getattr(module, "Metric", None) if module is not None else None


def is_metric(value: Any) -> bool:
    cls = metric_class()
    return cls is not None and isinstance(value, cls)

