"""What `self.log` records, and how it becomes callback_metrics, logged_metrics and the progress bar.

Lightning's semantics, kept exactly because callbacks and schedulers read these values:

- each (hook, name) pair is one metric; `on_step` keeps the latest value, `on_epoch` reduces over
  the epoch ("mean" weighted by batch size, "sum", "max", "min"), in the default float dtype;
- a metric logged with both gets the forked names `name_step` / `name_epoch`, and callback_metrics
  also carries `name` (the step value during the epoch, the epoch value after it);
- training metrics reach callback_metrics after every batch and at the end of the epoch;
  validation metrics only at the end of the validation epoch (never from the sanity check).

Values stay tensors on their device; nothing is read back to the host except when a logger writes
or the progress bar refreshes (Lightning converts the progress-bar values after every batch).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from mopt_fast.exceptions import MisconfigurationException

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
_REDUCTIONS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_TORCH_REDUCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}


def _default_dtype() -> torch.dtype:
    d = torch.get_default_dtype()
    return d if d in (torch.float32, torch.float64) else torch.float32


def _reduction(reduce_fx: Any) -> str:
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCTIONS:
        return _REDUCTIONS[reduce_fx.lower()]
    if reduce_fx in _TORCH_REDUCTIONS:
        return _TORCH_REDUCTIONS[reduce_fx]
    raise MisconfigurationException(
        f"reduce_fx={reduce_fx!r} is not supported: use 'mean', 'sum', 'max' or 'min' (or the torch functions)"
    )


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
    __slots__ = (
        "fx", "name", "prog_bar", "logger", "on_step", "on_epoch", "reduction", "enable_graph",
        "value", "count", "step_value", "has_reset", "step_name", "epoch_name", "_default", "dataloader_idx",
    )

    def __init__(self, fx: str, name: str, prog_bar: bool, logger: bool, on_step: bool, on_epoch: bool,
                 reduction: str, enable_graph: bool, device: torch.device, dataloader_idx: int | None = None,
                 add_dataloader_idx: bool = True) -> None:
        self.fx, self.name = fx, name
        self.prog_bar, self.logger = prog_bar, logger
        self.on_step, self.on_epoch = on_step, on_epoch
        self.reduction, self.enable_graph = reduction, enable_graph
        both = on_step and on_epoch
        self.step_name = name + "_step" if both else name
        self.epoch_name = name + "_epoch" if both else name
        # Several eval dataloaders: the metric belongs to one, and its names carry "/dataloader_idx_N"
        # (unless logged with add_dataloader_idx=False).
        self.dataloader_idx = dataloader_idx
        if dataloader_idx is not None and add_dataloader_idx:
            suffix = DATALOADER_SUFFIX.format(dataloader_idx)
            self.name, self.step_name, self.epoch_name = name + suffix, self.step_name + suffix, self.epoch_name + suffix
        self._default = {"max": float("-inf"), "min": float("inf")}.get(reduction, 0.0)
        self.reset(device)
        self.has_reset = False

    def options(self) -> tuple:
        return (self.prog_bar, self.logger, self.on_step, self.on_epoch, self.reduction, self.enable_graph)

    def same_options(self, options: tuple, dataloader_idx: int | None) -> bool:
        return self.options() == options and self.dataloader_idx == dataloader_idx

    def reset(self, device: torch.device | None = None) -> None:
        device = device if device is not None else self.value.device
        self.value = torch.tensor(self._default, dtype=_default_dtype(), device=device)
        self.count = torch.tensor(0, device=device)
        self.step_value: torch.Tensor | None = None
        self.has_reset = True

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        if not torch.is_floating_point(value):
            warnings.warn(
                f"You called `self.log({self.name!r}, ...)` in your `{self.fx}` but the value needs to be floating "
                f"to be reduced. Converting it to {_default_dtype()}.",
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
        if self.reduction == "mean":
            self.value = self.value + value * batch_size
            self.count = self.count + batch_size
        elif self.reduction == "sum":
            self.value = self.value + value
        elif self.reduction == "max":
            self.value = torch.max(self.value, value)
        else:
            self.value = torch.min(self.value, value)

    def compute(self) -> torch.Tensor:
        return self.value / self.count if self.reduction == "mean" else self.value


class _Results(dict):
    """The metrics of one stage (training or validation), keyed by "hook.name"."""

    def __init__(self, training: bool) -> None:
        super().__init__()
        self.training = training
        self.batch: Any = None
        self.batch_size: int | None = None
        self.dataloader_idx: int | None = None  # the eval dataloader running, when there are several

    def log(self, fx: str, name: str, value: torch.Tensor, prog_bar: bool, logger: bool, on_step: bool,
            on_epoch: bool, reduction: str, enable_graph: bool, batch_size: int | None,
            add_dataloader_idx: bool = True) -> None:
        key = f"{fx}.{name}"
        dataloader_idx = self.dataloader_idx
        if add_dataloader_idx and dataloader_idx is not None:
            key += f".{dataloader_idx}"
            fx += f".{dataloader_idx}"
        metric = self.get(key)
        if metric is None:
            metric = self[key] = _Metric(fx, name, prog_bar, logger, on_step, on_epoch, reduction, enable_graph,
                                         value.device, dataloader_idx, add_dataloader_idx)
        elif not metric.same_options((prog_bar, logger, on_step, on_epoch, reduction, enable_graph), dataloader_idx):
            raise MisconfigurationException(
                f"You called `self.log({name}, ...)` twice in `{fx}` with different arguments. This is not allowed"
            )
        if batch_size is None:
            batch_size = self.batch_size
            if batch_size is None:
                batch_size = 1
                if self.batch is not None and on_epoch and reduction == "mean":
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
                if not m.on_step or m.step_value is None:
                    continue
                value, forked = m.step_value, m.step_name
            else:
                if not m.on_epoch:
                    continue
                value, forked = m.compute(), m.epoch_name
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

    def reset(self, fx: str | None = None) -> None:
        for m in self.values():
            if fx is None or m.fx == fx:
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
    def log(self, trainer: Any, name: str, value: Any, *, prog_bar: bool, logger: bool | None, on_step: bool | None,
            on_epoch: bool | None, reduce_fx: Any, enable_graph: bool, batch_size: int | None,
            sync_dist: bool = False, add_dataloader_idx: bool = True) -> None:
        fx = trainer._current_fx
        results = self.active
        if results is None or fx is None:
            raise MisconfigurationException(
                "You are trying to `self.log()` but it is not managed by the `Trainer` control flow"
            )
        opts = _LOG_OPTIONS.get(fx)
        if opts is None:
            raise MisconfigurationException(f"You can't `self.log()` inside `{fx}`.")
        allowed_step, allowed_epoch, default_step, default_epoch = opts
        on_step = default_step if on_step is None else bool(on_step)
        on_epoch = default_epoch if on_epoch is None else bool(on_epoch)
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"{fx}: `self.log({name!r}, ..., on_step=False, on_epoch=False)` is not useful: it would be "
                "recorded nowhere"
            )
        if on_step not in allowed_step:
            raise MisconfigurationException(
                f"You can't `self.log({fx}, on_step={on_step})`. Possible values are {list(allowed_step)}"
            )
        if on_epoch not in allowed_epoch:
            raise MisconfigurationException(
                f"You can't `self.log({fx}, on_epoch={on_epoch})`. Possible values are {list(allowed_epoch)}"
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise MisconfigurationException(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                "`dataloader_idx` when `add_dataloader_idx=True`"
            )
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"`self.log({name}, {value})` was called, but the tensor must have a single element. "
                    f"You can try doing `self.log({name}, {value}.mean())`"
                )
            value = value.squeeze()
            if not enable_graph:
                value = value.detach()
        else:
            value = torch.tensor(float(value), dtype=_default_dtype(), device=trainer.root_device)
        reduction = _reduction(reduce_fx)
        if sync_dist and trainer.world_size > 1:
            # Reduced across ranks when logged (a collective: every rank must log it).
            value = trainer.strategy.reduce(value.float() if not value.is_floating_point() else value, reduction)
        if self.current_fx != fx and self.first_loop_iter in (None, True):
            results.reset(fx=fx)
        if logger and not trainer.loggers:
            warnings.warn(
                f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured.", stacklevel=4
            )
        results.log(fx, name, value, prog_bar, True if logger is None else bool(logger), on_step, on_epoch,
                    reduction, enable_graph, batch_size, add_dataloader_idx)
        self.current_fx = fx

    # -- the loop's events ------------------------------------------------------------------
    def on_batch_start(self, batch: Any, dataloader_idx: int | None = None) -> None:
        if self.first_loop_iter is None:
            self.first_loop_iter = True
        elif self.first_loop_iter is True:
            self.first_loop_iter = False
        self.active.batch = batch
        self.active.batch_size = None
        self.active.dataloader_idx = dataloader_idx

    def on_batch_end(self) -> None:
        self._update(*self.active.metrics(on_step=True))
        self.active.batch = None
        self.active.batch_size = None

    def epoch_end_reached(self) -> None:
        self.first_loop_iter = None

    def on_epoch_end(self) -> dict[str, torch.Tensor]:
        """Folds the epoch values into the dictionaries; returns the ones for the loggers."""
        callback, log, pbar = self.active.metrics(on_step=False)
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
        """The training metrics and the three dictionaries, as plain data (for exact resume)."""
        train = {
            key: {
                "fx": m.fx, "name": m.name, "options": list(m.options()), "value": m.value, "count": m.count,
                "step_value": m.step_value, "has_reset": m.has_reset,
            }
            for key, m in self.train.items()
        }
        return {
            "train": train, "callback": dict(self._callback), "logged": dict(self._logged), "pbar": dict(self._pbar),
            "first_loop_iter": self.first_loop_iter, "current_fx": self.current_fx,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train.clear()
        for key, d in state["train"].items():
            prog_bar, logger, on_step, on_epoch, reduction, enable_graph = d["options"]
            m = _Metric(d["fx"], d["name"], prog_bar, logger, on_step, on_epoch, reduction, enable_graph,
                        d["value"].device)
            m.value, m.count, m.step_value, m.has_reset = d["value"], d["count"], d["step_value"], d["has_reset"]
            self.train[key] = m
        self._callback, self._logged, self._pbar = dict(state["callback"]), dict(state["logged"]), dict(state["pbar"])
        self.first_loop_iter, self.current_fx = state["first_loop_iter"], state["current_fx"]
