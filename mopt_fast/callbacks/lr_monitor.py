"""LearningRateMonitor: log every optimizer's learning rate (and momentum, weight decay) to the
loggers, under Lightning 2.6's names and at its steps.

Names: ``lr-<OptimizerClass>`` (``-1``, ``-2``... for more optimizers of one class), ``/pg1``,
``/pg2``... (or the param group's ``name``) for several parameter groups, the scheduler config's
``name`` in place of ``lr-<OptimizerClass>``; ``-momentum`` and ``-weight_decay`` suffixes.
"""
from __future__ import annotations

import itertools
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.optimizer import Optimizer

from mopt_fast.callbacks.callback import Callback
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["LearningRateMonitor"]


def _should_update_logs(trainer: CallbackTrainer) -> bool:
    """Lightning's logger-connector rule, checked before the batch's step is counted."""
    every = trainer.log_every_n_steps
    if every == 0:
        return False
    return (trainer.fit_loop.batches_that_stepped + 1) % every == 0 or trainer.should_stop


class LearningRateMonitor(Callback):
    """Logs the learning rate of every optimizer (every parameter group) while training.

    Args:
        logging_interval: "step" or "epoch" logs every optimizer at that interval; None logs each
            scheduler's optimizer at its scheduler's ``interval`` (and optimizers without a
            scheduler at every logging step).
        log_momentum: also log ``momentum`` (or ``betas[0]``), as ``<name>-momentum``.
        log_weight_decay: also log ``weight_decay``, as ``<name>-weight_decay``.

    The values go to the loggers at the training steps the loggers write (``log_every_n_steps``)
    and at the start of each epoch, and into ``trainer.callback_metrics``; ``lrs`` keeps each
    name's history. A Trainer without a logger is an error.
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationException("logging_interval should be `step` or `epoch` or `None`.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    def on_train_start(self, trainer: CallbackTrainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.")
        if self.log_momentum:
            def no_key(key: str) -> bool:
                if trainer.lr_scheduler_configs:
                    return any(key not in c.scheduler.optimizer.defaults for c in trainer.lr_scheduler_configs)
                return any(key not in opt.defaults for opt in trainer.optimizers)

            if no_key("momentum") and no_key("betas"):
                warnings.warn(
                    "You have set log_momentum=True, but some optimizers do not"
                    " have momentum. This will log a value 0 for the momentum.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        sched_names, seen_opts, seen_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        opt_names, _ = self._find_names_from_optimizers(trainer.optimizers, seen_opts, seen_types)
        names = list(itertools.chain.from_iterable(sched_names + opt_names))
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {name + "-momentum": None for name in names}
        self.last_weight_decay_values = {name + "-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer: CallbackTrainer, *args: Any, **kwargs: Any) -> None:
        if not _should_update_logs(trainer):
            return
        if self.logging_interval != "epoch":
            self._log(trainer, self._extract_stats(trainer, "step" if self.logging_interval is None else "any"))

    def on_train_epoch_start(self, trainer: CallbackTrainer, *args: Any, **kwargs: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer, self._extract_stats(trainer, "epoch" if self.logging_interval is None else "any"))

    @staticmethod
    def _log(trainer: CallbackTrainer, stats: dict[str, float]) -> None:
        if stats and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer.fit_loop.batches_that_stepped)

    def _extract_stats(self, trainer: CallbackTrainer, interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        sched_names, seen_opts, seen_types = self._find_names_from_schedulers(trainer.lr_scheduler_configs)
        self._remap_keys(sched_names)
        for names, config in zip(sched_names, trainer.lr_scheduler_configs):
            if interval in (config.interval, "any"):
                stats.update(self._get_optimizer_stats(config.scheduler.optimizer, names))
        opt_names, without_scheduler = self._find_names_from_optimizers(trainer.optimizers, seen_opts, seen_types)
        self._remap_keys(opt_names)
        for opt, names in zip(without_scheduler, opt_names):
            stats.update(self._get_optimizer_stats(opt, names))
        trainer.callback_metrics.update(
            {name: torch.tensor(value, device=trainer.root_device) for name, value in stats.items()})
        return stats

    def _get_optimizer_stats(self, optimizer: Optimizer, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        use_betas = "betas" in optimizer.defaults
        for pg, name in zip(optimizer.param_groups, names):
            lr = pg["lr"]
            self.lrs[name].append(lr)
            stats[name] = lr
            if self.log_momentum:
                momentum = pg["betas"][0] if use_betas else pg.get("momentum", 0)
                self.last_momentum_values[f"{name}-momentum"] = momentum
                stats[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                wd = pg["weight_decay"]
                self.last_weight_decay_values[f"{name}-weight_decay"] = wd
                stats[f"{name}-weight_decay"] = wd
        return stats

    def _remap_keys(self, names: list[list[str]], token: str = "/pg1") -> None:
        """A param group added to an optimizer renames its history ``lr-X`` to ``lr-X/pg1``."""
        for group in names:
            for new_name in group:
                old_name = new_name.replace(token, "")
                if token in new_name and old_name in self.lrs:
                    self.lrs[new_name] = self.lrs.pop(old_name)
                elif new_name not in self.lrs:
                    self.lrs[new_name] = []

    @staticmethod
    def _add_prefix(name: str, optimizer_cls: type, seen_types: defaultdict) -> str:
        if optimizer_cls not in seen_types:
            return name
        count = seen_types[optimizer_cls]
        return name + f"-{count - 1}" if count > 1 else name

    @staticmethod
    def _add_suffix(name: str, param_groups: list[dict], index: int, use_names: bool = True) -> str:
        if len(param_groups) > 1:
            if not use_names:
                return f"{name}/pg{index + 1}"
            return f"{name}/{param_groups[index].get('name', f'pg{index + 1}')}"
        if use_names:
            pg_name = param_groups[index].get("name")
            return f"{name}/{pg_name}" if pg_name else name
        return name

    @staticmethod
    def _duplicate_param_group_names(param_groups: list[dict]) -> set[str]:
        names = [pg.get("name", f"pg{i}") for i, pg in enumerate(param_groups, start=1)]
        return {n for n in names if names.count(n) > 1}

    def _find_names_from_schedulers(self, configs: list[Any]) -> tuple[list[list[str]], list[Optimizer], defaultdict]:
        names: list[list[str]] = []
        seen_opts: list[Optimizer] = []
        seen_types: defaultdict = defaultdict(int)
        for config in configs:
            sch = config.scheduler
            name = config.name if config.name is not None else "lr-" + sch.optimizer.__class__.__name__
            names.append(self._check_duplicates_and_update_name(sch.optimizer, name, seen_opts, seen_types, config))
        return names, seen_opts, seen_types

    def _find_names_from_optimizers(self, optimizers: list[Any], seen_opts: list[Optimizer],
                                    seen_types: defaultdict) -> tuple[list[list[str]], list[Optimizer]]:
        names: list[list[str]] = []
        without_scheduler: list[Optimizer] = []
        for optimizer in optimizers:
            optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            if optimizer in seen_opts:
                continue
            name = "lr-" + optimizer.__class__.__name__
            names.append(self._check_duplicates_and_update_name(optimizer, name, seen_opts, seen_types, None))
            without_scheduler.append(optimizer)
        return names, without_scheduler

    def _check_duplicates_and_update_name(self, optimizer: Optimizer, name: str, seen_opts: list[Optimizer],
                                          seen_types: defaultdict, config: Any) -> list[str]:
        seen_opts.append(optimizer)
        optimizer_cls = type(optimizer)
        if config is None or config.name is None:
            seen_types[optimizer_cls] += 1
        param_groups = optimizer.param_groups
        duplicates = self._duplicate_param_group_names(param_groups)
        if duplicates:
            raise MisconfigurationException(
                "A single `Optimizer` cannot have multiple parameter groups with identical "
                f"`name` values. {name} has duplicated parameter group names {duplicates}"
            )
        name = self._add_prefix(name, optimizer_cls, seen_types)
        return [self._add_suffix(name, param_groups, i) for i in range(len(param_groups))]
