"""What `self.log` records, and how it becomes callback_metrics, logged_metrics and the progress bar.

Lightning's semantics, kept exactly because callbacks and schedulers read these values:

- each (hook, name) pair is one metric; `on_step` keeps the latest value, `on_epoch` reduces over
  the epoch ("mean" weighted by batch size, "sum", "max", "min"; given as strings, the torch
  functions or Python's builtins, which keep their own semantics), in the default float dtype;
- a logged `torchmetrics.Metric` is read, never updated: its step value is the result of its last
  forward (``_forward_cache``) when it was logged, its epoch value `compute()`, and it is `reset()`
  with the epoch's results (torchmetrics is imported by the user, never here);
- logged tensors are snapshots (detached copies), so later in-place changes do not reach them;
- a metric logged with both gets the forked names `name_step` / `name_epoch`, and callback_metrics
  also carries `name` (the step value during the epoch, the epoch value after it);
- training metrics reach callback_metrics after every batch and at the end of the epoch;
  validation metrics only at the end of the validation epoch (never from the sanity check).

Values stay tensors on their device; nothing is read back to the host except when a logger writes
or the progress bar refreshes (Lightning converts the progress-bar values after every batch).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.core.module import is_metric
from mopt_fast.core.states import RunningStage
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.protocol import MetricsTrainer

__all__ = ["MetricStore"]

# hook -> (allowed on_step values, allowed on_epoch values, default on_step, default on_epoch)
_STEP_HOOK = ((False, True), (False, True), True, False)
_EPOCH_HOOK = ((False,), (True,), False, True)
_VAL_STEP_HOOK = ((False, True), (False, True), False, True)
_LOG_OPTIONS: dict[str, tuple] = {
    **dict.fromkeys(
        (
            "training_step", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
            "optimizer_step", "configure_gradient_clipping", "clip_gradients", "on_before_zero_grad",
            "optimizer_zero_grad", "on_train_batch_start", "on_train_batch_end",
        ),
        _STEP_HOOK,
    ),
    **dict.fromkeys(
        (
            "validation_step", "on_validation_batch_start", "on_validation_batch_end",
            "test_step", "on_test_batch_start", "on_test_batch_end",
        ),
        _VAL_STEP_HOOK,
    ),
    **dict.fromkeys(
        (
            "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_validation_start",
            "on_validation_epoch_start", "on_validation_epoch_end", "on_test_start", "on_test_epoch_start",
            "on_test_epoch_end",
        ),
        _EPOCH_HOOK,
    ),
}
DATALOADER_SUFFIX = "/dataloader_idx_{}"
# reduce_fx -> its code. Lightning tells torch.max from the builtin max (they differ on NaN and
# in the dtype they return, and a metric cannot be logged with both), so the codes do too.
_REDUCTION_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_CALLABLE_REDUCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
                        sum: "py_sum", max: "py_max", min: "py_min"}
_EXTREMUM: dict[str, Callable[[Any, Any], Any]] = {"max": torch.max, "min": torch.min, "py_max": max, "py_min": min}


def _default_dtype() -> torch.dtype:
    d = torch.get_default_dtype()
    return d if d in (torch.float32, torch.float64) else torch.float32


def _reduction(reduce_fx: Any) -> str:
    """The reduction code of `reduce_fx` ("mean", "sum", "max", "min", or "py_sum", "py_max",
    "py_min" for Python's builtins), or Lightning's error."""
    if isinstance(reduce_fx, str):
        code = _REDUCTION_NAMES.get(reduce_fx.lower())
    else:
        try:
            code = _CALLABLE_REDUCTIONS.get(reduce_fx)
        except TypeError:  # unhashable
            code = None
    if code is None:
        raise MisconfigurationException(
            "Only `self.log(..., reduce_fx={min,max,mean,sum})` are supported. If you need a custom reduction, "
            f"please log a `torchmetrics.Metric` instance instead. Found: {reduce_fx}"
        )
    return code


def base_reduction(code: str) -> str:
    """"mean", "sum", "max" or "min": the collective that syncs a metric of reduction `code`."""
    return code[3:] if code.startswith("py_") else code


def _batch_sizes(batch: Any) -> Iterable[int | None]:
    if isinstance(batch, torch.Tensor):
        yield 1 if batch.ndim == 0 else batch.size(0)
    elif isinstance(batch, (str, bytes)):
        yield None
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from _batch_sizes(v)
    elif isinstance(batch, Iterable):
        for v in batch:
            yield from _batch_sizes(v)
    else:
        yield None


def extract_batch_size(batch: Any) -> int:
    """The size of the first tensor in `batch` (its first dimension), as Lightning infers it."""
    size = None
    for bs in _batch_sizes(batch):
        if bs is None:
            continue
        if size is None:
            size = bs
        elif size != bs:
            warnings.warn(
                f"Trying to infer the `batch_size` from an ambiguous collection. The batch size we found is {size}. "
                "To avoid any miscalculations, use `self.log(..., batch_size=batch_size)`.",
                stacklevel=5,
            )
            break
    if size is None:
        raise MisconfigurationException(
            "We could not infer the batch_size from the batch. Either simplify its structure or provide the "
            "batch_size as `self.log(..., batch_size=batch_size)`."
        )
    return size


class _Metric:
    """One logged (hook, name): a running reduction of logged tensors, or a `torchmetrics.Metric`
    the user logs (`is_tensor` False; the object itself, read but never updated here)."""

    __slots__ = (
        "fx", "name", "prog_bar", "logger", "on_step", "on_epoch", "reduction", "enable_graph",
        "is_tensor", "metric_attribute", "value", "count", "step_value", "computed", "has_reset",
        "step_name", "epoch_name", "_default", "dataloader_idx",
    )
    value: Any  # the running tensor, or the user's torchmetrics.Metric
    count: Any  # the summed batch sizes of a "mean" (a tensor); None for a Metric
    step_value: Any  # the last logged batch value

    def __init__(self, fx: str, name: str, prog_bar: bool, logger: bool, on_step: bool, on_epoch: bool,
                 reduction: str, enable_graph: bool, device: torch.device | None, metric: Any = None,
                 metric_attribute: str | None = None, dataloader_idx: int | None = None,
                 add_dataloader_idx: bool = True) -> None:
        self.fx, self.name = fx, name
        self.prog_bar, self.logger = prog_bar, logger
        self.on_step, self.on_epoch = on_step, on_epoch
        self.reduction, self.enable_graph = reduction, enable_graph
        self.is_tensor = metric is None
        self.metric_attribute = metric_attribute
        both = on_step and on_epoch
        self.step_name = name + "_step" if both else name
        self.epoch_name = name + "_epoch" if both else name
        # Several eval dataloaders: the metric belongs to one, and its names carry "/dataloader_idx_N"
        # (unless logged with add_dataloader_idx=False).
        self.dataloader_idx = dataloader_idx
        if dataloader_idx is not None and add_dataloader_idx:
            suffix = DATALOADER_SUFFIX.format(dataloader_idx)
            self.name, self.step_name, self.epoch_name = name + suffix, self.step_name + suffix, self.epoch_name + suffix
        self.computed: Any = None
        if self.is_tensor:
            self._default = {"max": float("-inf"), "min": float("inf"), "py_max": float("-inf"),
                             "py_min": float("inf")}.get(reduction, 0.0)
            self.reset(device)
        else:
            self.value = metric
            self.count = None
            self.step_value = None
        self.has_reset = False

    def options(self) -> tuple:
        return (self.prog_bar, self.logger, self.on_step, self.on_epoch, self.reduction, self.enable_graph)

    def same_options(self, options: tuple, dataloader_idx: int | None) -> bool:
        return self.options() == options and self.dataloader_idx == dataloader_idx

    def reset(self, device: torch.device | None = None) -> None:
        if self.is_tensor:
            device = device if device is not None else self.value.device
            self.value = torch.tensor(self._default, dtype=_default_dtype(), device=device)
            self.count = torch.tensor(0, device=device)
        else:
            self.value.reset()  # the user's Metric
        self.step_value = None
        self.computed = None
        self.has_reset = True

    def update(self, value: Any, batch_size: int) -> None:
        self.computed = None
        if not self.is_tensor:
            self.value = value
            self.step_value = value._forward_cache  # the batch value of its last forward, as logged
            return
        if not torch.is_floating_point(value):
            warnings.warn(
                f"You called `self.log({self.name!r}, ...)` in your `{self.fx}` but the value needs to be floating "
                f"to be reduced. Converting it to {_default_dtype()}. You can silence this warning by converting "
                "the value to floating point yourself. If you don't intend to reduce the value (for instance when "
                "logging the global step or epoch) then you can use "
                f"`self.logger.log_metrics({{{self.name!r}: ...}})` instead.",
                stacklevel=5,
            )
            value = value.to(_default_dtype())
        elif value.dtype not in (torch.float32, torch.float64):
            value = value.to(_default_dtype())
        if self.on_step:
            self.step_value = value
            if not self.on_epoch:
                self.value = value
                return
        code = self.reduction
        if code == "mean":
            self.value = self.value + value * batch_size
            self.count = self.count + batch_size
        elif code in ("sum", "py_sum"):
            self.value = self.value + value
        else:
            self.value = _EXTREMUM[code](self.value, value)

    def compute(self) -> Any:
        if not self.is_tensor:
            if self.computed is None:  # kept until the next log, as Lightning keeps it
                self.computed = self.value.compute()
            return self.computed
        return self.value / self.count if self.reduction == "mean" else self.value


def _checked(m: _Metric, value: Any) -> Any:
    """A Metric's step or epoch value must be a tensor (Lightning's check)."""
    if value is not None and not isinstance(value, torch.Tensor):
        raise ValueError(f"The `.compute()` return of the metric logged as {m.name!r} must be a tensor. Found {value}")
    return value


class _Results(dict):
    """The metrics of one stage (training or validation), keyed by "hook.name"."""

    def __init__(self, training: bool) -> None:
        super().__init__()
        self.training = training
        self.batch: Any = None
        self.batch_size: int | None = None
        self.dataloader_idx: int | None = None  # the eval dataloader running, when there are several

    def log(self, fx: str, name: str, value: Any, prog_bar: bool, logger: bool, on_step: bool,
            on_epoch: bool, reduction: str, enable_graph: bool, batch_size: int | None,
            metric_attribute: str | None = None, add_dataloader_idx: bool = True) -> None:
        key = f"{fx}.{name}"
        dataloader_idx = self.dataloader_idx
        if add_dataloader_idx and dataloader_idx is not None:
            key += f".{dataloader_idx}"
            fx += f".{dataloader_idx}"
        metric = self.get(key)
        is_tensor = isinstance(value, torch.Tensor)
        if metric is None:
            metric = self[key] = _Metric(fx, name, prog_bar, logger, on_step, on_epoch, reduction, enable_graph,
                                         value.device if is_tensor else None,
                                         metric=None if is_tensor else value, metric_attribute=metric_attribute,
                                         dataloader_idx=dataloader_idx, add_dataloader_idx=add_dataloader_idx)
        elif not metric.same_options((prog_bar, logger, on_step, on_epoch, reduction, enable_graph), dataloader_idx) or (
            metric.metric_attribute != metric_attribute
        ):
            raise MisconfigurationException(
                f"You called `self.log({name}, ...)` twice in `{fx}` with different arguments. This is not allowed"
            )
        if batch_size is None:
            batch_size = self.batch_size
            if batch_size is None:
                batch_size = 1
                if self.batch is not None and is_tensor and on_epoch and reduction == "mean":
                    batch_size = self.batch_size = extract_batch_size(self.batch)
        metric.update(value, batch_size)
        metric.has_reset = False

    def metrics(self, on_step: bool) -> tuple[dict, dict, dict]:
        """(callback, log, progress bar) dictionaries of the current values."""
        callback: dict[str, torch.Tensor] = {}
        log: dict[str, torch.Tensor] = {}
        pbar: dict[str, torch.Tensor] = {}
        for m in self.values():
            if m.has_reset or m.dataloader_idx != self.dataloader_idx:
                continue
            if on_step:
                if not m.on_step:
                    continue
                value, forked = _checked(m, m.step_value), m.step_name
                if value is None:
                    continue
            else:
                if not m.on_epoch:
                    continue
                value, forked = _checked(m, m.compute()), m.epoch_name
            if not m.enable_graph:
                value = value.detach()
            if m.logger:
                log[forked] = value
            if self.training or (m.on_epoch and not on_step):
                callback[m.name] = value
                callback[forked] = value
            if m.prog_bar:
                pbar[forked] = value
        return callback, log, pbar

    def reset(self, fx: str | None = None, metrics: bool | None = None) -> None:
        """Reset the entries of hook `fx` (all: None); `metrics` False: only the logged tensors,
        True: only the logged Metric objects, None: both (as Lightning's ResultCollection.reset)."""
        for m in self.values():
            if (metrics is None or metrics != m.is_tensor) and (fx is None or m.fx == fx):
                m.reset()


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


class MetricStore:
    """The Trainer's logger connector: the result collections and the three metric dictionaries."""

    def __init__(self) -> None:
        self.train = _Results(training=True)
        self.val = _Results(training=False)
        self.active: _Results | None = None
        self.first_loop_iter: bool | None = None
        self.current_fx: str | None = None
        self.reset_metrics()

    def reset_metrics(self) -> None:
        self._callback: dict[str, torch.Tensor] = {}
        self._logged: dict[str, torch.Tensor] = {}
        self._pbar: dict[str, torch.Tensor] = {}

    # -- self.log ---------------------------------------------------------------------------
    def log(self, trainer: MetricsTrainer, name: str, value: Any, *, prog_bar: bool, logger: bool | None,
            on_step: bool | None, on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, batch_size: int | None,
            sync_dist: bool = False, metric_attribute: str | None = None, add_dataloader_idx: bool = True,
            sync_dist_group: Any = None) -> None:
        """`value`: a number, a tensor, or a torchmetrics.Metric (then `metric_attribute` names it).
        `sync_dist`: reduced over the ranks of `sync_dist_group` (None: all of them)."""
        fx = trainer.hooks.current_fx
        results = self.active
        # Lightning's checks in its order: a running fit / sanity check / validate / test (predict
        # logs nothing), a hook, one that may log
        stage = trainer.state.stage
        if stage is None or stage is RunningStage.PREDICTING:
            raise MisconfigurationException(
                "You are trying to `self.log()` but the loop's result collection is not registered yet. This is most "
                "likely because you are trying to log in a `predict` hook, but it doesn't support logging"
            )
        if fx is None:
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow"
            )
        opts = _LOG_OPTIONS.get(fx)
        if opts is None:
            raise MisconfigurationException(
                f"You can't `self.log()` inside `{fx}`. HINT: You can still log directly to the logger by using "
                "`self.logger.experiment`."
            )
        if results is None:
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow"
            )
        allowed_step, allowed_epoch, default_step, default_epoch = opts
        on_step = default_step if on_step is None else on_step
        on_epoch = default_epoch if on_epoch is None else on_epoch
        for key, flag, allowed in (("on_step", on_step, allowed_step), ("on_epoch", on_epoch, allowed_epoch)):
            if flag not in allowed:
                raise MisconfigurationException(
                    f"You can't `self.log({key}={flag})` inside `{fx}`, must be one of {allowed}."
                )
        on_step, on_epoch = bool(on_step), bool(on_epoch)
        is_tensor = not is_metric(value)
        if is_tensor:
            if isinstance(value, torch.Tensor):
                # A snapshot: a later in-place change of the logged tensor (a parameter, a running
                # count) must not reach the logged value. Detached whatever `enable_graph` says,
                # as Lightning 2.6 does.
                value = value.clone().detach()
            else:
                value = torch.tensor(value, device=trainer.root_device, dtype=_default_dtype())
            if value.numel() != 1:
                raise ValueError(
                    f"`self.log({name}, {value})` was called, but the tensor must have a single element. "
                    f"You can try doing `self.log({name}, {value}.mean())`"
                )
            value = value.squeeze()
        if self.current_fx != fx and self.first_loop_iter in (None, True):
            results.reset(fx=fx, metrics=False)  # a new epoch's first batch: the hook's tensors start afresh
        if logger and not trainer.loggers:
            warnings.warn(
                f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured. You can enable "
                "one by doing `Trainer(logger=ALogger(...))`",
                stacklevel=4,
            )
        if not on_step and not on_epoch:
            raise MisconfigurationException("`self.log(on_step=False, on_epoch=False)` is not useful.")
        reduction = _reduction(reduce_fx)
        if is_tensor and sync_dist and trainer.world_size > 1:
            # Reduced across the group's ranks when logged (a collective: each of them must log it);
            # "mean" divides by the group's size, as Lightning. The epoch value accumulates these.
            value = trainer.strategy.reduce(value if value.is_floating_point() else value.float(),
                                            group=sync_dist_group, reduce_op=base_reduction(reduction))
        results.log(fx, name, value, prog_bar, True if logger is None else bool(logger), on_step, on_epoch,
                    reduction, enable_graph, batch_size, metric_attribute=None if is_tensor else metric_attribute,
                    add_dataloader_idx=add_dataloader_idx)
        self.current_fx = fx

    # -- the loop's events ------------------------------------------------------------------
    def _active(self) -> _Results:
        assert self.active is not None, "the loop sets its results (reset_results) before its batches"
        return self.active

    def on_batch_start(self, batch: Any, dataloader_idx: int | None = None) -> None:
        if self.first_loop_iter is None:
            self.first_loop_iter = True
        elif self.first_loop_iter is True:
            self.first_loop_iter = False
        active = self._active()
        active.batch = batch
        active.batch_size = None
        active.dataloader_idx = dataloader_idx

    def on_batch_end(self) -> None:
        active = self._active()
        self._update(*active.metrics(on_step=True))
        active.batch = None
        active.batch_size = None

    def epoch_end_reached(self) -> None:
        self.first_loop_iter = None

    def on_epoch_end(self) -> dict[str, torch.Tensor]:
        """Folds the epoch values into the dictionaries; returns the ones for the loggers."""
        callback, log, pbar = self._active().metrics(on_step=False)
        self._update(callback, log, pbar)
        self.current_fx = None
        return log

    def reset_results(self, results: _Results) -> None:
        results.reset()
        self.first_loop_iter = None
        self.current_fx = None

    def _update(self, callback: dict, log: dict, pbar: dict) -> None:
        self._callback.update(callback)
        self._logged.update(log)
        self._pbar.update(pbar)

    def _current(self) -> tuple[dict, dict, dict]:
        if self.active is None:
            return {}, {}, {}
        return self.active.metrics(on_step=self.first_loop_iter is not None)

    # -- what the Trainer exposes -------------------------------------------------------------
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        self._callback.update(self._current()[0])
        return self._callback

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        self._logged.update(self._current()[1])
        return self._logged

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        self._pbar.update(self._current()[2])
        return to_scalars(self._pbar)

    def step_log_metrics(self) -> dict[str, torch.Tensor]:
        return self._current()[1]

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training metrics and the three dictionaries, as plain data (for exact resume). A
        logged torchmetrics.Metric is stored by its attribute name and its state (its own state
        is not in the module's state_dict)."""
        train = {}
        for key, m in self.train.items():
            entry = {"fx": m.fx, "name": m.name, "options": list(m.options()), "step_value": m.step_value,
                     "has_reset": m.has_reset}
            if m.is_tensor:
                entry.update(value=m.value, count=m.count)
            else:
                if not isinstance(m.step_value, torch.Tensor):
                    entry["step_value"] = None
                entry.update(metric_attribute=m.metric_attribute, metric_state=_metric_state(m.value))
            train[key] = entry
        return {
            "train": train, "callback": dict(self._callback), "logged": dict(self._logged), "pbar": dict(self._pbar),
            "first_loop_iter": self.first_loop_iter, "current_fx": self.current_fx,
        }

    def load_state_dict(self, state: dict[str, Any], module: Any = None) -> None:
        """Restores `state_dict`'s metrics; `module` (the LightningModule) holds the logged Metric
        objects, whose state is put back too."""
        self.train.clear()
        for key, d in state["train"].items():
            prog_bar, logger, on_step, on_epoch, reduction, enable_graph = d["options"]
            if "metric_attribute" not in d:
                m = _Metric(d["fx"], d["name"], prog_bar, logger, on_step, on_epoch, reduction, enable_graph,
                            d["value"].device)
                m.value, m.count = d["value"], d["count"]
            else:
                metric = _find_metric(module, d["metric_attribute"])
                if metric is None:
                    warnings.warn(
                        f"The checkpoint holds the state of the torchmetrics.Metric logged as {d['name']!r} (attribute "
                        f"{d['metric_attribute']!r}), which the module does not have: its value restarts empty",
                        stacklevel=3,
                    )
                    continue
                _load_metric_state(metric, d["metric_state"])
                m = _Metric(d["fx"], d["name"], prog_bar, logger, on_step, on_epoch, reduction, enable_graph, None,
                            metric=metric, metric_attribute=d["metric_attribute"])
            m.step_value, m.has_reset = d["step_value"], d["has_reset"]
            self.train[key] = m
        self._callback, self._logged, self._pbar = dict(state["callback"]), dict(state["logged"]), dict(state["pbar"])
        self.first_loop_iter, self.current_fx = state["first_loop_iter"], state["current_fx"]


def _metric_state(metric: Any) -> dict[str, Any]:
    """A torchmetrics.Metric's accumulated state as plain data (tensors and lists of them)."""
    cache = metric._forward_cache
    return {
        "states": {name: (list(v) if isinstance(v, list) else v) for name, v in metric.metric_state.items()},
        "update_count": int(metric._update_count),
        "forward_cache": cache if isinstance(cache, torch.Tensor) else None,
    }


def _find_metric(module: Any, attribute: str | None) -> Any:
    if module is None or not attribute:
        return None
    try:
        found = module.get_submodule(attribute)
    except AttributeError:
        return None
    return found if is_metric(found) else None


def _load_metric_state(metric: Any, state: dict[str, Any]) -> None:
    for name, value in state["states"].items():
        current = getattr(metric, name)
        if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
            value = value.to(current.device)
        elif isinstance(value, list):
            device = metric.device
            value = [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        setattr(metric, name, value)
    metric._update_count = state["update_count"]
    metric._forward_cache = state["forward_cache"]
    metric._computed = None
