"""Lightning's own callbacks inside mopt_fast.Trainer: the members of Lightning's Trainer and loops
that they read, and the few places where Lightning's code asks for Lightning's classes.

Lightning's built-in callbacks (and third-party ones written like them) read more of the Trainer
than its documented attributes: the loops' progress counters (``fit_loop.epoch_loop.
_batches_that_stepped``, ``batch_progress``, ``predict_loop.current_batch_indices``), the logger
connector (``_logger_connector.should_update_logs`` / ``log_metrics`` of the Trainer), the accelerator's
device statistics. This module gives the Trainer and its loops those members, as views of the
state mopt_fast's loops keep anyway: nothing here runs per batch unless a callback reads it.

Nothing here imports Lightning. Lightning's classes are looked up only in the Lightning packages
the process has already imported (`lightning_classes`), i.e. when the user brought Lightning's
objects. Two of Lightning's checks cannot be met by mopt_fast's classes without that:
- `lightning.pytorch.utilities.model_helpers.is_overridden(name, instance)` without a parent
  raises "Expected a parent" for an instance that is not one of Lightning's classes
  (GradientAccumulationScheduler and WeightAveraging call it on the module): `install_is_overridden_
  fallback` wraps it so that a mopt_fast module, data module or callback is compared with its
  mopt_fast base class; for every other instance the original function runs unchanged.
- ThroughputMonitor asks ``isinstance(trainer.precision_plugin, lightning Precision)`` for the
  compute dtype: `lightning_precision_view` gives mopt_fast's plugin Lightning's matching
  precision class as a second base (mopt_fast's methods first), and the ``precision`` attribute
  Lightning reads.
"""
from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch

from mopt_fast.callbacks.callback import Callback
from mopt_fast.core.datamodule import LightningDataModule
from mopt_fast.core.module import LightningModule
from mopt_fast.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from mopt_fast.trainer._logging import log_to_loggers

if TYPE_CHECKING:
    from mopt_fast.trainer.evaluation_loop import EvaluationLoop
    from mopt_fast.trainer.fit_loop import FitLoop
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["Accelerator", "CPUAccelerator", "CUDAAccelerator", "BatchProgress", "EpochLoopView", "LoggerConnector", "callback_base",
           "install_is_overridden_fallback", "is_lightning_callback", "is_monitoring", "kind_of", "lightning_classes",
           "lightning_precision_view"]

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def lightning_classes(module: str, name: str) -> tuple[type, ...]:
    """The class `name` of ``<package>.<module>`` in each Lightning package the process has already
    imported (``lightning.pytorch``, ``pytorch_lightning``); () when none is."""
    found: list[type] = []
    for package in _PACKAGES:
        if package not in sys.modules:
            continue
        try:
            mod = sys.modules.get(f"{package}.{module}") or importlib.import_module(f"{package}.{module}")
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def is_lightning_callback(callback: Any, name: str = "Callback") -> bool:
    """`callback` is an instance of Lightning's ``callbacks.<name>`` (e.g. "EarlyStopping")."""
    classes = lightning_classes("callbacks", name)
    return bool(classes) and isinstance(callback, classes)


def kind_of(ours: type, lightning_name: str) -> tuple[type, ...]:
    """mopt_fast's class `ours` and Lightning's ``callbacks.<lightning_name>`` (when imported): for
    isinstance checks that must also recognise Lightning's callbacks (a progress bar, a checkpoint
    callback...)."""
    return (ours, *lightning_classes("callbacks", lightning_name))


def callback_base(callback: Any) -> type:
    """The base class whose hooks count as not overridden: Lightning's Callback for Lightning's
    callbacks (so their untouched no-op hooks are not called), else mopt_fast's."""
    for cls in lightning_classes("callbacks", "Callback"):
        if isinstance(callback, cls):
            return cls
    return Callback


def is_monitoring(callback: Any) -> bool:
    """Lightning calls EarlyStopping's and the checkpoint callbacks' on_train_epoch_end after the
    module's (so they see what it logs): mopt_fast's set ``_monitoring``, Lightning's are
    recognised by class."""
    return bool(getattr(callback, "_monitoring", False)) or is_lightning_callback(callback, "EarlyStopping") or (
        is_lightning_callback(callback, "Checkpoint"))


# -- Lightning's is_overridden, on mopt_fast's classes ---------------------------------------------------
_OUR_BASES = (LightningModule, LightningDataModule, Callback)


def install_is_overridden_fallback() -> None:
    """Lightning's ``model_helpers.is_overridden`` with a fallback for mopt_fast's objects (see the
    module's docstring), in ``model_helpers`` and in every imported Lightning module that holds it
    by name. Idempotent; nothing happens when Lightning is not imported."""
    for package in _PACKAGES:
        helpers = sys.modules.get(f"{package}.utilities.model_helpers")
        original = getattr(helpers, "is_overridden", None)
        if original is None or getattr(original, "_mopt_fast_fallback", False):
            continue

        @functools.wraps(original)
        def is_overridden(method_name: str, instance: object | None = None, parent: type | None = None,
                          _original: Any = original) -> bool:
            if parent is None and instance is not None:
                parent = next((base for base in _OUR_BASES if isinstance(instance, base)), None)
            return bool(_original(method_name, instance, parent))

        is_overridden._mopt_fast_fallback = True  # type: ignore[attr-defined]
        for name, mod in list(sys.modules.items()):
            if name.startswith(package) and getattr(mod, "is_overridden", None) is original:
                mod.is_overridden = is_overridden  # type: ignore[attr-defined]


# -- the precision plugin as Lightning's class ------------------------------------------------------------
_VIEWS: dict[tuple[type, type], type] = {}


def _view_class(ours: type, theirs: type) -> type:
    """mopt_fast's plugin class `ours` with Lightning's `theirs` as a second base (made once)."""
    view = _VIEWS.get((ours, theirs))
    if view is None:
        def __reduce__(self: Any) -> Any:  # pickles as mopt_fast's own class (the view is made again on demand)
            return _rebuild_plain, (ours, self.__dict__)

        namespace = {"__reduce__": __reduce__, "__module__": ours.__module__, "__qualname__": ours.__qualname__}
        view = _VIEWS[(ours, theirs)] = types.new_class(ours.__name__, (ours, theirs), {},
                                                         lambda ns: ns.update(namespace))
    return view


def _rebuild_plain(cls: type, state: dict[str, Any]) -> Any:
    obj: Any = object.__new__(cls)
    obj.__dict__.update(state)
    return obj


def lightning_precision_view(plugin: Precision) -> Precision:
    """`plugin`, also an instance of Lightning's matching precision class when Lightning is
    imported (``Precision`` for 32-true, ``MixedPrecision`` for the mixed modes, ``HalfPrecision`` and
    ``DoublePrecision`` for the other "*-true"), with the
    ``precision`` and ``device`` attributes Lightning reads. mopt_fast's methods come first: the
    Trainer's behaviour does not change. `plugin` itself is returned otherwise."""
    names = {Precision: "Precision", MixedPrecision: "MixedPrecision", HalfPrecision: "HalfPrecision",
             DoublePrecision: "DoublePrecision"}
    if type(plugin) not in names:  # a user's subclass, or already a view
        return plugin
    theirs = lightning_classes("plugins.precision", names[type(plugin)])
    if not theirs:
        return plugin
    plugin.__class__ = _view_class(type(plugin), theirs[0])
    plugin.__dict__.setdefault("precision", plugin.name)
    if isinstance(plugin, MixedPrecision):
        plugin.__dict__.setdefault("device", plugin.device_type)
    return plugin


# -- the accelerator --------------------------------------------------------------------------------------
class Accelerator:
    """``trainer.accelerator``: what Lightning's callbacks ask of it (DeviceStatsMonitor)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type

    def get_device_stats(self, device: torch.device | str | int) -> dict[str, Any]:
        """Lightning's statistics: CUDA's memory_stats, or psutil's CPU/memory/swap use."""
        if self.device_type == "cuda":
            return torch.cuda.memory_stats(device)
        try:
            import psutil
        except ImportError:
            raise ModuleNotFoundError("Fetching CPU device stats requires `psutil` to be installed.") from None
        return {"cpu_vm_percent": psutil.virtual_memory().percent, "cpu_percent": psutil.cpu_percent(),
                "cpu_swap_percent": psutil.swap_memory().percent}

    @staticmethod
    def of(device_type: str) -> Accelerator:
        """The accelerator of a device type ("cpu", "cuda"), under Lightning's class name."""
        return CUDAAccelerator("cuda") if device_type == "cuda" else CPUAccelerator("cpu")


class CPUAccelerator(Accelerator):
    pass


class CUDAAccelerator(Accelerator):
    pass


# -- the loops' progress, as Lightning's loops show it ----------------------------------------------------
class _Counts:
    """One of Lightning's progress records (ready/started/processed/completed): here every stage
    has the same count, taken when a batch is done."""

    __slots__ = ("ready", "started", "processed", "completed")

    def __init__(self, count: int) -> None:
        self.ready = self.started = self.processed = self.completed = count

    def __repr__(self) -> str:
        return f"_Counts(ready={self.ready}, completed={self.completed})"


class BatchProgress:
    """A loop's ``batch_progress``: `total` batches (across runs) and `current` (this epoch / run)."""

    __slots__ = ("total", "current", "is_last_batch")

    def __init__(self, total: int, current: int, is_last_batch: bool = False) -> None:
        self.total, self.current, self.is_last_batch = _Counts(total), _Counts(current), is_last_batch


class EpochLoopView:
    """``trainer.fit_loop.epoch_loop``: Lightning's training-epoch loop, read from the fit loop."""

    def __init__(self, fit_loop: FitLoop) -> None:
        self._fit_loop = fit_loop

    @property
    def _batches_that_stepped(self) -> int:
        return self._fit_loop.batches_that_stepped

    @_batches_that_stepped.setter
    def _batches_that_stepped(self, value: int) -> None:
        self._fit_loop.batches_that_stepped = value

    @property
    def batch_progress(self) -> BatchProgress:
        loop = self._fit_loop
        return BatchProgress(loop.total_batch_idx + 1, loop.batch_idx + 1, loop.is_last_batch)

    @property
    def total_batch_idx(self) -> int:
        return self._fit_loop.total_batch_idx

    @property
    def batch_idx(self) -> int:
        return self._fit_loop.batch_idx

    @property
    def global_step(self) -> int:
        return self._fit_loop.global_step

    @property
    def val_loop(self) -> EvaluationLoop:
        return self._fit_loop.trainer.val_loop

    def _should_check_val_epoch(self) -> bool:
        return self._fit_loop.should_check_val_epoch()

    def _should_accumulate(self) -> bool:
        return self._fit_loop.should_accumulate()


class LoggerConnector:
    """The Trainer's ``_logger_connector``: the two members Lightning's callbacks use. `active_loop`
    gives the loop running now (the Trainer's ``_active_loop``), or None."""

    def __init__(self, trainer: Trainer, active_loop: Callable[[], Any]) -> None:
        self.trainer = trainer
        self._active_loop = active_loop

    @property
    def should_update_logs(self) -> bool:
        """Whether step metrics go to the loggers now (Lightning's rule, for the active loop)."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if every == 0:
            return False
        loop = self._active_loop()
        if loop is None:
            return True
        if loop is trainer.fit_loop:
            step = trainer.fit_loop.batches_that_stepped + 1  # it may be asked before the step
        else:
            step = cast(Any, loop).batch_progress.current.ready  # an evaluation or prediction loop
        return step % every == 0 or trainer.should_stop

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """`metrics` to every logger (and ``trainer.logged_metrics``), as Lightning's: a "step"
        entry is the step when `step` is None, else the fit loop's logging step with the epoch."""
        trainer = self.trainer
        if not trainer.loggers or not metrics:
            return
        trainer.logged_metrics.update(metrics)
        log_to_loggers(trainer, metrics, step)  # the loggers write on global rank 0 only, as Lightning's
