"""``Trainer(profiler=...)``: the profiler a run reports to, and the profiled versions of what the
loops call, chosen once per run so that a run without a profiler pays nothing per step.

A profiled run calls every hook as Lightning's Trainer does (each callback's, overridden or not,
and the module's), each inside an action named as Lightning names it:
``[Callback]<state_key>.<hook>``, ``[LightningModule]<Class>.<hook>``,
``[LightningDataModule]<Class>.<hook>``, ``[Strategy]<Class>.<hook>`` (the steps, backward, the
batch transfer, the strategy's own start/end hooks), and the loops' ``run_training_epoch``,
``run_training_batch``, ``optimizer_step`` (manual optimization) and
``[_TrainingEpochLoop].train_dataloader_next`` / ``[_EvaluationLoop].val_next`` / ... (each fetch
of a batch). A run without a profiler (or with a `PassThroughProfiler`) keeps the plain
`HookRunner` and the plain loop functions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mopt_fast.core.hooks import ALWAYS_CALLED, CALLBACK_HOOKS
from mopt_fast.core.module import LightningModule
from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from mopt_fast.trainer._hooks import HookRunner, build_hook_table
from mopt_fast.trainer._lightning_surface import is_monitoring

if TYPE_CHECKING:
    from mopt_fast.trainer.fit_loop import FitLoop
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["ProfiledHookRunner", "ProfiledIterator", "active_profiler", "make_profiler", "profiled_batch_step"]

# Trainer(profiler="...") -> the profiler made; "xla" is Lightning's too (not built here).
_PROFILERS: dict[str, Callable[[], Profiler] | None] = {
    "simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler, "xla": None,
}

# Hooks after whose callbacks and module Lightning also calls the strategy's hook of that name.
_STRATEGY_HOOKS = frozenset({
    "on_train_start", "on_train_end", "on_train_batch_start", "on_validation_start", "on_validation_end",
    "on_test_start", "on_test_end", "on_predict_start", "on_predict_end",
})
# Steps: Lightning calls them through the strategy, which is what it profiles.
_STEPS = frozenset({"training_step", "validation_step", "test_step", "predict_step"})
# Module hooks Lightning calls without a profiler action of their own (its precision plugin calls
# `backward` directly, inside the strategy's `backward` action).
_UNPROFILED = frozenset({"backward"})


def make_profiler(profiler: Profiler | str | None) -> Profiler:
    """The Trainer's `profiler` argument as Lightning reads it: a name, a Profiler, or None
    (a PassThroughProfiler)."""
    if isinstance(profiler, str):
        name = profiler.lower()
        if name not in _PROFILERS:
            raise MisconfigurationException(
                "When passing string value for the `profiler` parameter of `Trainer`,"
                f" it can only be one of {list(_PROFILERS)}")
        make = _PROFILERS[name]
        if make is None:
            from mopt_fast.profilers import XLAProfiler  # raises NotBuiltError, naming it

            make = XLAProfiler
        return make()
    return profiler or PassThroughProfiler()


# The classes of a profiler that records nothing: ours and Lightning's (a subclass may record).
_PASS_THROUGH = {(PassThroughProfiler.__module__, "PassThroughProfiler"),
                 ("lightning.pytorch.profilers.base", "PassThroughProfiler"),
                 ("pytorch_lightning.profilers.base", "PassThroughProfiler")}


def active_profiler(profiler: Profiler) -> Profiler | None:
    """`profiler` when it records anything (ours, Lightning's or one's own): None for a
    PassThroughProfiler, the default."""
    cls = type(profiler)
    return None if (cls.__module__, cls.__name__) in _PASS_THROUGH else profiler


def strategy_action(trainer: Trainer, hook: str) -> str:
    """``[Strategy]<Class>.<hook>``, with Lightning's class name for the one-device strategy."""
    cls = type(trainer.strategy).__name__
    return f"[Strategy]{'SingleDeviceStrategy' if cls == 'Strategy' else cls}.{hook}"


def build_profiled_table(callbacks: list[Any], module: LightningModule) -> dict[str, list[tuple[Callable, bool]]]:
    """`build_hook_table`'s table with every callback on every hook (overridden or not) and the
    module on every hook it has, as Lightning calls them."""
    table = build_hook_table(callbacks, module)
    monitoring = [cb for cb in callbacks if is_monitoring(cb)]
    others = [cb for cb in callbacks if not is_monitoring(cb)]
    for name in CALLBACK_HOOKS + ALWAYS_CALLED:
        if name in _UNPROFILED:
            continue
        fn = getattr(module, name, None)
        mod = [(fn, False)] if callable(fn) else []
        if name not in CALLBACK_HOOKS:
            table[name] = mod
            continue
        cbs = [(getattr(cb, name), True) for cb in (others if name == "on_train_epoch_end" else callbacks)
               if callable(getattr(cb, name, None))]
        tail = [(getattr(cb, name), True) for cb in monitoring if callable(getattr(cb, name, None))]
        table[name] = cbs + mod + (tail if name == "on_train_epoch_end" else [])
    return table


class ProfiledHookRunner(HookRunner):
    """`HookRunner` with every call inside its profiler action: ``trainer.hooks`` of a profiled run
    (`hook_runner` picks it at the start of each entry point)."""

    __slots__ = ()

    def build(self, callbacks: list[Any], module: LightningModule) -> None:
        self.table = build_profiled_table(callbacks, module)

    def _action(self, fn: Callable, is_callback: bool, name: str) -> str:
        owner = getattr(fn, "__self__", None)
        if is_callback:
            return f"[Callback]{getattr(owner, 'state_key', type(owner).__name__)}.{name}"
        trainer = self.trainer
        if owner is not None and owner is trainer.datamodule:
            return f"[LightningDataModule]{type(owner).__name__}.{name}"
        return f"[LightningModule]{type(trainer.lightning_module).__name__}.{name}"

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        profiler = self.profiler
        assert profiler is not None  # this class is only taken on with a profiler
        trainer = self.trainer
        automatic_backward = name == "on_before_backward" and self._automatic()
        if automatic_backward:  # the strategy's backward: on_before_backward ... on_after_backward
            profiler.start(strategy_action(trainer, "backward"))
        prev = self.current_fx
        self.current_fx = name
        result = None
        try:
            for fn, is_callback in self.table.get(name, ()):
                with profiler.profile(self._action(fn, is_callback, name)):
                    if is_callback:
                        fn(trainer, trainer.lightning_module, *args, **kwargs)
                    else:
                        result = fn(*args, **kwargs)
        finally:
            self.current_fx = prev
        if name in _STRATEGY_HOOKS:
            with profiler.profile(strategy_action(trainer, name)):
                pass
        elif name == "on_after_backward" and self._automatic():
            profiler.stop(strategy_action(trainer, "backward"))
        return result

    def _automatic(self) -> bool:
        # manual_backward reaches the strategy's backward without Lightning's profiler action
        module = self.trainer.lightning_module
        return module is not None and module.automatic_optimization

    def call_datamodule(self, name: str, *args: Any, **kwargs: Any) -> Any:
        datamodule = self.trainer.datamodule
        fn = getattr(datamodule, name, None) if datamodule is not None else None
        if not callable(fn):
            return None
        assert self.profiler is not None
        with self.profiler.profile(f"[LightningDataModule]{type(datamodule).__name__}.{name}"):
            return fn(*args, **kwargs)

    def run_as(self, name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        profiler = self.profiler
        assert profiler is not None
        trainer = self.trainer
        if name in _UNPROFILED:
            return super().run_as(name, fn, *args, **kwargs)
        if name in _STEPS:
            action = strategy_action(trainer, name)
        else:
            action = self._action(fn, False, name)
        # Lightning's strategy `batch_to_device` runs transfer_batch_to_device and on_after_batch_transfer
        if name == "transfer_batch_to_device":
            profiler.start(strategy_action(trainer, "batch_to_device"))
        with profiler.profile(action):
            result = super().run_as(name, fn, *args, **kwargs)
        if name == "on_after_batch_transfer":
            profiler.stop(strategy_action(trainer, "batch_to_device"))
        return result

    def module_overrides(self, name: str) -> bool:
        # configure_gradient_clipping: Lightning calls the module's at every step (it clips nothing
        # when no clipping is set), so the profile shows it
        return name == "configure_gradient_clipping" or super().module_overrides(name)


class ProfiledIterator:
    """`it` with each ``next`` inside the action `name` (Lightning's ``..._next`` fetch actions)."""

    __slots__ = ("_it", "_profiler", "_name")

    def __init__(self, it: Iterator, profiler: Profiler, name: str) -> None:
        self._it = it
        self._profiler = profiler
        self._name = name

    def __iter__(self) -> ProfiledIterator:
        return self

    def __next__(self) -> Any:
        with self._profiler.profile(self._name):
            return next(self._it)

    def __getattr__(self, name: str) -> Any:  # the wrapped iterator's state (worker iterators, ...)
        return getattr(self._it, name)


def profiled_batch_step(step: Callable[[Trainer, FitLoop, tuple], dict[str, Any]], profiler: Profiler,
                        manual: bool) -> Callable[[Trainer, FitLoop, tuple], dict[str, Any]]:
    """`step` (training_step.run_automatic / run_manual) inside ``run_training_batch``; with manual
    optimization, each optimizer step inside ``optimizer_step`` too (as Lightning's manual loop)."""

    def run(trainer: Trainer, loop: FitLoop, args: tuple) -> dict[str, Any]:
        with profiler.profile("run_training_batch"):
            if not manual:
                return step(trainer, loop, args)
            plain = trainer.run_optimizer_step

            def profiled_optimizer_step(*a: Any, **kw: Any) -> Any:
                with profiler.profile("optimizer_step"):
                    return plain(*a, **kw)

            trainer.run_optimizer_step = profiled_optimizer_step
            try:
                return step(trainer, loop, args)
            finally:
                trainer.run_optimizer_step = plain

    return run


def hook_runner(trainer: Trainer, profiler: Profiler) -> HookRunner:
    """The hook runner of a run: the plain one unless `profiler` records anything."""
    active = active_profiler(profiler)
    return HookRunner(trainer) if active is None else ProfiledHookRunner(trainer, active)
