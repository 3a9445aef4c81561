"""The optimizer wrapper: a thin object that forwards to the real optimizer.

`LightningOptimizer(raw)` is an instance of `type(raw)` (its class is made on the fly, as
Lightning's is), so `isinstance` checks and the optimizer's own methods keep working; attributes it
does not define (`state`, `param_groups`, `defaults`, ...) are read from the raw optimizer. It adds:

- `step(closure=None, **kwargs)`: runs through a precision plugin (autocast-free; under 16-mixed
  the fused unscale/inf-check/clip pass and the scaler), calls the hooks that must see the
  gradients between the closure and the update, and returns what the optimizer returns;
- `zero_grad(set_to_none=True)`: set-to-none, or mopt_fast's fused zero kernel;
- standalone use, without a Trainer: `precision=`, `gradient_clip_val=`,
  `gradient_clip_algorithm=`, plus `autocast()` and `backward(loss)` for a hand-written loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.functional import zero_grad_
from mopt_fast.precision import CLIP_ALGORITHMS, Precision, make_precision

if TYPE_CHECKING:
    from mopt_fast.core.protocol import OptimizerTrainer

__all__ = ["LightningOptimizer", "validate_clip_args"]

_CLASS_CACHE: dict[type, type] = {}


def validate_clip_args(clip_val: Any, algorithm: Any) -> tuple[float | None, str | None]:
    """Checks Trainer-style clipping arguments: a number (or None) and 'norm'/'value' (or None)."""
    # Lightning's checks and messages (a bool is an int to it too; its list names "value" first)
    if clip_val is not None and not isinstance(clip_val, (int, float)):
        raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {clip_val}.")
    if algorithm is not None:
        if not isinstance(algorithm, str) or algorithm.lower() not in CLIP_ALGORITHMS:
            raise MisconfigurationException(
                f"`gradient_clip_algorithm` {algorithm} is invalid. Allowed algorithms: ['value', 'norm']."
            )
        algorithm = algorithm.lower()
    return (None if clip_val is None else float(clip_val)), algorithm


def _wrapper_class(optimizer_class: type) -> type:
    """The wrapper class of `optimizer_class` (made once): a LightningOptimizer and an instance of it."""
    cls = _CLASS_CACHE.get(optimizer_class)
    if cls is None:
        cls = _CLASS_CACHE[optimizer_class] = type(
            "Lightning" + optimizer_class.__name__, (LightningOptimizer, optimizer_class), {})
    return cls


def _new_wrapper(optimizer_class: type) -> LightningOptimizer:
    """An empty wrapper of `optimizer_class`'s wrapper class, for unpickling (`__reduce__`)."""
    cls = _wrapper_class(optimizer_class)
    wrapper: LightningOptimizer = object.__new__(cls)
    return wrapper


def _device_type(optimizer: torch.optim.Optimizer) -> str:
    for group in optimizer.param_groups:
        for p in group["params"]:
            return p.device.type
    return "cpu"


class LightningOptimizer:
    """Wraps a torch optimizer; see the module docstring.

    Args:
        optimizer: the torch optimizer (or another wrapper, which is unwrapped).
        precision: "32-true" (default), "16-mixed" or "bf16-mixed", or a `Precision` plugin;
            used when the wrapper is driven by hand (a Trainer gives it its own).
        gradient_clip_val: clip before every standalone `step()`; None or ≤ 0 does not clip.
        gradient_clip_algorithm: "norm" (default) or "value".
    """

    _optimizer: torch.optim.Optimizer

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: str | int | Precision = "32-true",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LightningOptimizer wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._optimizer = optimizer
        self._precision: Precision = make_precision(precision, _device_type(optimizer))
        self._clip_val, self._clip_algorithm = validate_clip_args(gradient_clip_val, gradient_clip_algorithm)
        # Set by a Trainer: the step counters, the hooks run before the update, the module.
        self._trainer: OptimizerTrainer | None = None
        self._on_before_step: Callable[[], None] | None = None
        self._on_after_step: Callable[[], None] | None = None
        self._before_update: Callable[[], None] | None = self._standalone_clip if self._clips else None
        self.__class__ = _wrapper_class(type(optimizer))

    # The class is made on the fly, so pickle cannot find it by name: a wrapper pickles as "the
    # wrapper class of this optimizer's class, with this state" (Trainer and progress-bar pickling,
    # as with Lightning's).
    def __reduce__(self) -> tuple[Any, ...]:
        return _new_wrapper, (type(self._optimizer),), self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Defined here, else the lookup falls through `__getattr__` to the optimizer's own.
        self.__dict__.update(state)

    @property
    def _clips(self) -> bool:
        return self._clip_val is not None and self._clip_val > 0

    def _standalone_clip(self) -> None:
        assert self._clip_val is not None  # installed only when `_clips`
        self._precision.clip_gradients(self._optimizer, self._clip_val, self._clip_algorithm or "norm")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The raw torch optimizer."""
        return self._optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler under 16-mixed, else None."""
        return self._precision.scaler

    def __getattr__(self, item: str) -> Any:
        # Only reached for attributes the wrapper itself lacks.
        if item == "_optimizer":
            raise AttributeError(item)
        return getattr(self._optimizer, item)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    # -- the hand-written-loop helpers -------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward context of this wrapper's precision (autocast under the mixed modes)."""
        return self._precision.forward_context()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """`loss.backward()`, with the loss scaled first under 16-mixed."""
        self._precision.backward(loss, *args, **kwargs)

    # -- the optimizer API --------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """One optimization step. `closure` (re-)computes the loss and gradients (LBFGS calls it
        several times); `kwargs` go to the optimizer's own `step`. Returns what it returns."""
        if closure is not None and not callable(closure):
            raise TypeError("When `optimizer.step(closure)` is called, the closure should be callable")
        if self._on_before_step is not None:
            self._on_before_step()
        trainer = self._trainer
        if trainer is not None:
            result = trainer.run_optimizer_step(self, closure, **kwargs)
        else:
            result = self._precision.optimizer_step(self._optimizer, closure, self._before_update, **kwargs)
            self._precision.end_iteration()
        if self._on_after_step is not None:
            self._on_after_step()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set the gradients to None, or zero them with one fused kernel per device. An optimizer
        class with its own ``zero_grad`` keeps it."""
        if type(self._optimizer).zero_grad is not torch.optim.Optimizer.zero_grad:
            return self._optimizer.zero_grad(set_to_none=set_to_none)
        params = [p for group in self._optimizer.param_groups for p in group["params"]]
        zero_grad_(params, set_to_none=set_to_none)

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Generator[None, None, None]:
        """Within the block only this optimizer's parameters require grad (see
        `LightningModule.toggle_optimizer`). `sync_grad=False` also skips the gradient all-reduce
        under DDP (a no-op on one process)."""
        if self._trainer is None:
            raise RuntimeError("toggle_model() needs the optimizer to be driven by a Trainer")
        module = self._trainer.lightning_module
        assert module is not None  # a Trainer drives its optimizers with its module attached
        with self._trainer.strategy.block_grad_sync(not sync_grad):
            module.toggle_optimizer(self)
            try:
                yield
            finally:
                module.untoggle_optimizer(self)


# -- what configure_optimizers returns ------------------------------------------------------------
@dataclasses.dataclass
class LRSchedulerConfig:
    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


class _MockOptimizer(torch.optim.Optimizer):
    """What a fit runs with when `configure_optimizers` returns None (Lightning's _MockOptimizer):
    `step` only calls its closure (automatic optimization still runs training_step and backward),
    `zero_grad` does nothing, and it has no state."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def add_param_group(self, param_group: dict[Any, Any]) -> None:
        pass

    def load_state_dict(self, state_dict: dict[Any, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            return closure()
        return None

    def zero_grad(self, set_to_none: bool | None = True) -> None:
        pass

    def __repr__(self) -> str:
        return "No Optimizer"


_SCHEDULER_KEYS = {f.name for f in dataclasses.fields(LRSchedulerConfig)}


_FORMS = (
    "Output from `configure_optimizers()` should be one of:\n"
    " * `Optimizer`\n * [`Optimizer`, ...] or (`Optimizer`, ...)\n"
    " * ([`Optimizer`, ...], [`LRScheduler`, ...])\n"
    ' * {"optimizer": `Optimizer`, (optional) "lr_scheduler": `LRScheduler` or a dict, (optional) "monitor": str}\n'
    " * a list or tuple of such dictionaries"
)


def _is_optimizer(x: Any) -> bool:
    return isinstance(x, torch.optim.Optimizer)


def _check_optimizer_dict(d: Mapping) -> None:
    if "optimizer" not in d:
        raise MisconfigurationException(f'A dictionary from `configure_optimizers` needs an "optimizer" key. {_FORMS}')
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        warnings.warn(f"Found unsupported keys in the optimizer configuration: {extra}", RuntimeWarning, stacklevel=5)


def _split(conf: Any) -> tuple[list, list, str | None]:
    """(optimizers, schedulers as given, a top-level monitor) for any of the six forms."""
    if _is_optimizer(conf):
        return [conf], [], None
    if isinstance(conf, Mapping):
        _check_optimizer_dict(conf)
        scheds = [conf["lr_scheduler"]] if "lr_scheduler" in conf else []
        return [conf["optimizer"]], scheds, conf.get("monitor")
    if isinstance(conf, (list, tuple)):
        if len(conf) == 2 and isinstance(conf[0], list) and all(_is_optimizer(o) for o in conf[0]):
            opts, scheds = conf
            return list(opts), (list(scheds) if isinstance(scheds, (list, tuple)) else [scheds]), None
        if conf and all(isinstance(d, Mapping) for d in conf):
            opts, scheds = [], []
            for d in conf:
                _check_optimizer_dict(d)
                opts.append(d["optimizer"])
                if "lr_scheduler" in d:
                    s = d["lr_scheduler"]
                    scheds.append(dict(s) if isinstance(s, Mapping) else {"scheduler": s})
            return opts, scheds, None
        if conf and all(_is_optimizer(o) for o in conf):
            return list(conf), [], None
    raise MisconfigurationException(f"Unknown configuration for model optimizers. {_FORMS}")


def _automatic_config(s: Any, monitor: str | None) -> LRSchedulerConfig:
    if isinstance(s, Mapping):
        s = dict(s)
        extra = set(s) - _SCHEDULER_KEYS
        if extra:
            warnings.warn(
                f"Found unsupported keys in the lr scheduler dict: {extra}. HINT: remove them from the output of "
                "`configure_optimizers`.",
                RuntimeWarning,
                stacklevel=4,
            )
            s = {k: v for k, v in s.items() if k in _SCHEDULER_KEYS}
        if "scheduler" not in s:
            raise MisconfigurationException('The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler')
        if s.get("interval", "epoch") not in ("step", "epoch"):
            raise MisconfigurationException(
                f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{s["interval"]}"'
            )
        freq = s.get("frequency", 1)
        if not isinstance(freq, int) or isinstance(freq, bool) or freq < 1:
            raise MisconfigurationException(f'The "frequency" key in lr scheduler dict must be an int ≥ 1, got {freq!r}')
        s.setdefault("reduce_on_plateau", isinstance(s["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau))
        if s["reduce_on_plateau"] and s.get("monitor") is None:
            raise MisconfigurationException(
                "The lr scheduler dict must include a monitor when a `ReduceLROnPlateau` scheduler is used. For example:"
                ' {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "your_loss"}}'
            )
        if isinstance(s["scheduler"], torch.optim.lr_scheduler.OneCycleLR) and s.get("interval", "epoch") == "epoch":
            warnings.warn(
                "A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': 'step'?",
                RuntimeWarning,
                stacklevel=4,
            )
        return LRSchedulerConfig(**s)
    if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if monitor is None:
            raise MisconfigurationException(
                "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used. For "
                'example: {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "metric_to_track"}'
            )
        return LRSchedulerConfig(s, reduce_on_plateau=True, monitor=monitor)
    return LRSchedulerConfig(s)


def _manual_config(s: Any) -> LRSchedulerConfig:
    if isinstance(s, Mapping):
        ignored = [k for k in s if k in ("reduce_on_plateau", "monitor", "strict")]
        if ignored:
            warnings.warn(
                f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You need to call "
                "`lr_scheduler.step()` manually in manual optimization.",
                RuntimeWarning,
                stacklevel=4,
            )
        kept = {k: v for k, v in s.items() if k not in ("reduce_on_plateau", "monitor", "strict")}
        extra = set(kept) - _SCHEDULER_KEYS
        if extra:
            raise MisconfigurationException(f"Unknown keys in the lr scheduler dict: {sorted(extra)}")
        if "scheduler" not in kept:
            raise MisconfigurationException('The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler')
        return LRSchedulerConfig(**kept)
    return LRSchedulerConfig(s)


def configure_optimizers(conf: Any, automatic: bool) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """The optimizers and scheduler configs of a `configure_optimizers` return value."""
    if conf is None:
        warnings.warn(
            "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
            stacklevel=3,
        )
        conf = _MockOptimizer()
    optimizers, schedulers, monitor = _split(conf)
    if automatic:
        configs = [_automatic_config(s, monitor) for s in schedulers]
    else:
        if monitor is not None:
            warnings.warn(
                "`configure_optimizers` returned a 'monitor', which is ignored in manual optimization: step "
                "the scheduler yourself.",
                RuntimeWarning,
                stacklevel=3,
            )
        configs = [_manual_config(s) for s in schedulers]
    for c in configs:
        if not (hasattr(c.scheduler, "state_dict") and hasattr(c.scheduler, "load_state_dict")):
            raise TypeError(
                f"The provided lr scheduler `{type(c.scheduler).__name__}` is invalid. It should have "
                "`state_dict` and `load_state_dict` methods defined."
            )
    known = {id(o) for o in optimizers}
    for c in configs:
        opt = getattr(c.scheduler, "optimizer", None)
        if opt is not None and id(opt) not in known:
            raise MisconfigurationException(
                "Some schedulers are attached with an optimizer that wasn't returned from `configure_optimizers`."
            )
    return optimizers, configs

