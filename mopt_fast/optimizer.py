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
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.functional import zero_grad_
from mopt_fast.precision import CLIP_ALGORITHMS, Precision, make_precision

if TYPE_CHECKING:
    from mopt_fast.trainer._protocol import OptimizerTrainer

__all__ = ["LightningOptimizer", "validate_clip_args"]

_CLASS_CACHE: dict[type, type] = {}


def validate_clip_args(clip_val: Any, algorithm: Any) -> tuple[float | None, str | None]:
    """Checks Trainer-style clipping arguments: a number (or None) and 'norm'/'value' (or None)."""
    if clip_val is not None and (isinstance(clip_val, bool) or not isinstance(clip_val, (int, float))):
        raise TypeError(f"`gradient_clip_val` should be an int or a float. Got {clip_val!r}.")
    if algorithm is not None:
        if not isinstance(algorithm, str) or algorithm.lower() not in CLIP_ALGORITHMS:
            raise MisconfigurationException(
                f"`gradient_clip_algorithm` {algorithm!r} is invalid. Allowed algorithms: {list(CLIP_ALGORITHMS)}."
            )
        algorithm = algorithm.lower()
    return (None if clip_val is None else float(clip_val)), algorithm


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
        cls = type(optimizer)
        if cls not in _CLASS_CACHE:
            _CLASS_CACHE[cls] = type("Lightning" + cls.__name__, (LightningOptimizer, cls), {})
        self.__class__ = _CLASS_CACHE[cls]

    @property
    def _clips(self) -> bool:
        return self._clip_val is not None and self._clip_val > 0

    def _standalone_clip(self) -> None:
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
            result = trainer._optimizer_step(self, closure, **kwargs)
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
        with self._trainer._block_grad_sync(not sync_grad):
            module.toggle_optimizer(self)
            try:
                yield
            finally:
                module.untoggle_optimizer(self)
