"""Reading what `configure_optimizers` returns: the six forms Lightning accepts, and the scheduler
dictionaries (scheduler, interval, frequency, monitor, strict, name, reduce_on_plateau). None (or
no `configure_optimizers`) fits with a stand-in optimizer that never updates, as Lightning does."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mopt_fast.exceptions import MisconfigurationException

__all__ = ["LRSchedulerConfig", "configure_optimizers"]


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

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
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
