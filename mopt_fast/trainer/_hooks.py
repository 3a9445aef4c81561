"""Which hooks run, as Lightning decides it: `is_overridden` (a method of the class, or a function
assigned on the instance, whose code differs from the base class's: ``m.validation_step = None``
disables validation, ``m.on_train_epoch_end = fn`` is called), signature checks, and the table of
callables the Trainer calls per hook name (only those that do something)."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mopt_fast.hooks import EVAL_CALLBACK_HOOKS

if TYPE_CHECKING:
    from mopt_fast.module import LightningModule

__all__ = ["ALWAYS", "CALLBACK_HOOKS", "build_hook_table", "is_overridden", "is_param_in_hook_signature"]

# Module hooks whose default does something: always called.
ALWAYS = (
    "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step", "backward",
    "on_validation_model_eval", "on_validation_model_zero_grad", "on_test_model_eval", "on_predict_model_eval",
)


def _callback_hooks() -> tuple[str, ...]:
    from mopt_fast.trainer.callbacks import HOOKS

    return tuple(dict.fromkeys(HOOKS + EVAL_CALLBACK_HOOKS))


CALLBACK_HOOKS = _callback_hooks()


def _code(fn: Any) -> Any:
    if hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    if isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method: its function
    return getattr(fn, "__code__", fn)


def is_overridden(name: str, instance: Any, parent: type) -> bool:
    """Lightning's rule: the attribute `name` of `instance` (its class's method, or anything
    assigned on the instance) is not None and its code is not `parent`'s."""
    attr = getattr(instance, name, None)
    if attr is None:
        return False
    base = getattr(parent, name, None)
    if base is None:
        return callable(attr)
    return _code(attr) != _code(base)


def is_param_in_hook_signature(fn: Callable, param: str, explicit: bool = False, min_args: int | None = None) -> bool:
    """Lightning's check of a hook's signature: `param` is named, or (unless `explicit`) it takes
    *args, or it takes at least `min_args` arguments."""
    try:
        spec = inspect.getfullargspec(fn)
    except TypeError:
        return not explicit
    args = spec.args[1:]  # without `self` (Lightning drops the first argument whatever it is)
    return (
        param in args
        or (not explicit and spec.varargs is not None)
        or (isinstance(min_args, int) and len(args) >= min_args)
    )


def _monitoring(callback: Any) -> bool:
    """Lightning calls EarlyStopping's and the checkpoint callbacks' on_train_epoch_end after the
    module's (so they see what it logs); those classes set ``_monitoring``."""
    return getattr(callback, "_monitoring", False)


def build_hook_table(callbacks: list[Any], module: LightningModule) -> dict[str, list[tuple[Callable, bool]]]:
    """hook name -> [(callable, is_callback)]: the callbacks' then the module's, each only when it
    overrides the hook (or, for the module, when its default does something)."""
    from mopt_fast.module import LightningModule
    from mopt_fast.trainer.callbacks import Callback

    table: dict[str, list[tuple[Callable, bool]]] = {}
    for name in CALLBACK_HOOKS + ALWAYS:
        cbs = [cb for cb in callbacks if name in CALLBACK_HOOKS and is_overridden(name, cb, Callback)]
        if name == "on_train_epoch_end":  # non-monitoring callbacks, the module, monitoring callbacks
            cbs = [cb for cb in cbs if not _monitoring(cb)] + [None] + [cb for cb in cbs if _monitoring(cb)]
        else:
            cbs.append(None)
        fns: list[tuple[Callable, bool]] = []
        for cb in cbs:
            if cb is not None:
                fns.append((getattr(cb, name), True))
                continue
            fn = getattr(module, name, None)
            if callable(fn) and (name in ALWAYS or is_overridden(name, module, LightningModule)):
                fns.append((fn, False))
        table[name] = fns
    return table


def call_as_hook(trainer: Any, name: str, fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` with `name` as the trainer's current hook (what self.log checks), the
    previous one put back after."""
    prev = trainer._current_fx
    trainer._current_fx = name
    try:
        return fn(*args)
    finally:
        trainer._current_fx = prev
