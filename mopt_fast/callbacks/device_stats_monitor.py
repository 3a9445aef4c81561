"""DeviceStatsMonitor (Lightning 2.6's ``lightning.pytorch.callbacks.DeviceStatsMonitor``): logs the
device's statistics around every training, validation and test batch at the steps the loggers
write (``log_every_n_steps``), under ``DeviceStatsMonitor.<hook><separator><stat>``.

A CUDA device's statistics are `torch.cuda.memory_stats`; the CPU's (``cpu_vm_percent``,
``cpu_percent``, ``cpu_swap_percent``) come from psutil, which is optional: without it, a run
that asks for CPU statistics fails with Lightning's ModuleNotFoundError.
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.callbacks.callback import Callback
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import MonitorTrainer

__all__ = ["DeviceStatsMonitor", "get_cpu_stats"]

# What Lightning's requirement check says of psutil (its messages quote it).
_PSUTIL_MISSING = "Requirement 'psutil' not met. HINT: Try running `pip install -U 'psutil'`"


def _psutil_available() -> bool:
    return importlib.util.find_spec("psutil") is not None


def get_cpu_stats() -> dict[str, float]:
    """The CPU's memory, load and swap use, in percent (psutil)."""
    if not _psutil_available():
        raise ModuleNotFoundError(f"Fetching CPU device stats requires `psutil` to be installed. {_PSUTIL_MISSING}")
    import psutil

    return {"cpu_vm_percent": psutil.virtual_memory().percent, "cpu_percent": psutil.cpu_percent(),
            "cpu_swap_percent": psutil.swap_memory().percent}


def _device_stats(device: torch.device) -> dict[str, Any]:
    """Lightning's accelerators' ``get_device_stats``: CUDA's memory statistics, psutil's for the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_stats(device)
    return get_cpu_stats()


class DeviceStatsMonitor(Callback):
    """Logs the statistics of the Trainer's device during training, validation and testing.

    Args:
        cpu_stats: None: the CPU's statistics when the device is the CPU; True: the CPU's as well
            (psutil); False: never the CPU's.
    """

    def __init__(self, cpu_stats: bool | None = None) -> None:
        self._cpu_stats = cpu_stats

    def setup(self, trainer: MonitorTrainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException("Cannot use `DeviceStatsMonitor` callback with `Trainer(logger=False)`.")
        # Checked here to fail once, before training, when the statistics cannot be read.
        if self._cpu_stats is None and trainer.strategy.root_device.type == "cpu" and not _psutil_available():
            raise ModuleNotFoundError(
                f"`DeviceStatsMonitor` cannot log CPU stats as `psutil` is not installed. {_PSUTIL_MISSING} "
            )

    def _get_and_log_device_stats(self, trainer: MonitorTrainer, key: str) -> None:
        if not trainer.should_update_logs:
            return
        device = trainer.strategy.root_device
        if self._cpu_stats is False and device.type == "cpu":
            return
        stats = _device_stats(device)
        if self._cpu_stats and device.type != "cpu":
            stats.update(get_cpu_stats())
        prefix = f"{self.__class__.__qualname__}.{key}"
        for logger in trainer.loggers:
            separator = logger.group_separator
            logger.log_metrics({f"{prefix}{separator}{k}": v for k, v in stats.items()},
                               step=trainer.fit_loop.batches_that_stepped)

    def on_train_batch_start(self, trainer: MonitorTrainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._get_and_log_device_stats(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._get_and_log_device_stats(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer: MonitorTrainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._get_and_log_device_stats(trainer, "on_validation_batch_start")

    def on_validation_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._get_and_log_device_stats(trainer, "on_validation_batch_end")

    def on_test_batch_start(self, trainer: MonitorTrainer, pl_module: LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._get_and_log_device_stats(trainer, "on_test_batch_start")

    def on_test_batch_end(self, trainer: MonitorTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._get_and_log_device_stats(trainer, "on_test_batch_end")
