"""Which hooks run, as Lightning decides it: `is_overridden` (a method of the class, or a function
assigned on the instance, whose code differs from the base class's: ``m.validation_step = None``
disables validation, ``m.on_train_epoch_end = fn`` is called), signature checks, and the table of
callables the Trainer calls per hook name (only those that do something)."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mopt_fast.core.hooks import ALWAYS_CALLED, CALLBACK_HOOKS
from mopt_fast.core.module import LightningModule
from mopt_fast.trainer._lightning_surface import callback_base, is_monitoring

if TYPE_CHECKING:
    from mopt_fast.profilers import Profiler
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["HookRunner", "takes_batch_idx", "build_hook_table", "is_overridden", "is_param_in_hook_signature"]



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


def build_hook_table(callbacks: list[Any], module: LightningModule) -> dict[str, list[tuple[Callable, bool]]]:
    """hook name -> [(callable, is_callback)]: the callbacks' then the module's, each only when it
    overrides the hook (or, for the module, when its default does something)."""
    table: dict[str, list[tuple[Callable, bool]]] = {}
    bases = [callback_base(cb) for cb in callbacks]  # Lightning's Callback for Lightning's callbacks
    monitoring = {id(cb) for cb in callbacks if is_monitoring(cb)}
    for name in CALLBACK_HOOKS + ALWAYS_CALLED:
        cbs = [cb for cb, base in zip(callbacks, bases) if name in CALLBACK_HOOKS and is_overridden(name, cb, base)]
        if name == "on_train_epoch_end":  # non-monitoring callbacks, the module, monitoring callbacks
            cbs = ([cb for cb in cbs if id(cb) not in monitoring] + [None]
                   + [cb for cb in cbs if id(cb) in monitoring])
        else:
            cbs.append(None)
        fns: list[tuple[Callable, bool]] = []
        for cb in cbs:
            if cb is not None:
                fns.append((getattr(cb, name), True))
                continue
            fn = getattr(module, name, None)
            if callable(fn) and (name in ALWAYS_CALLED or is_overridden(name, module, LightningModule)):
                fns.append((fn, False))
        table[name] = fns
    return table


def takes_batch_idx(fn: Callable) -> bool:
    """A step or batch hook that takes ``batch_idx`` (as Lightning decides it)."""
    return is_param_in_hook_signature(fn, "batch_idx", min_args=2)


class HookRunner:
    """Calls the hooks of one run and knows which one is running (`current_fx`, what ``self.log``
    checks): the one place that sets it. ``trainer.hooks``; the loops call through it. A profiled
    run has a `ProfiledHookRunner` instead (_profiling.py), with its `profiler`; None here."""

    __slots__ = ("trainer", "table", "current_fx", "profiler")

    def __init__(self, trainer: Trainer, profiler: Profiler | None = None) -> None:
        self.trainer = trainer
        self.table: dict[str, list[tuple[Callable, bool]]] = {}
        self.current_fx: str | None = None
        self.profiler = profiler

    def build(self, callbacks: list[Any], module: LightningModule) -> None:
        """The callables of each hook for a run (`build_hook_table`)."""
        self.table = build_hook_table(callbacks, module)

    def has(self, name: str) -> bool:
        """Whether any callback or the module does something on `name`."""
        return bool(self.table.get(name))

    def module_overrides(self, name: str) -> bool:
        return is_overridden(name, self.trainer.lightning_module, LightningModule)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """`name` on the callbacks (with trainer, module), then the module; the module's result."""
        fns = self.table.get(name)
        if not fns:
            return None
        trainer = self.trainer
        prev = self.current_fx
        self.current_fx = name
        result = None
        try:
            for fn, is_callback in fns:
                if is_callback:
                    fn(trainer, trainer.lightning_module, *args, **kwargs)
                else:
                    result = fn(*args, **kwargs)
        finally:
            self.current_fx = prev
        return result

    def call_module(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The module's hook `name`, whether or not it is overridden."""
        return self.run_as(name, getattr(self.trainer.lightning_module, name), *args, **kwargs)

    def call_datamodule(self, name: str, *args: Any, **kwargs: Any) -> Any:
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return None
        fn = getattr(datamodule, name, None)
        return fn(*args, **kwargs) if callable(fn) else None

    def run_as(self, name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with `name` as the running hook, the previous one put back after."""
        prev = self.current_fx
        self.current_fx = name
        try:
            return fn(*args, **kwargs)
        finally:
            self.current_fx = prev
