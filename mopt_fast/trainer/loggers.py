"""Loggers: CSV (metrics.csv, always available) and TensorBoard (when tensorboard is installed).

Both lay files out as Lightning does: ``<save_dir>/<name>/version_<n>/``.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger"]


def _next_version(root: str) -> int:
    if not os.path.isdir(root):
        return 0
    found = [int(m.group(1)) for d in os.listdir(root) if (m := re.fullmatch(r"version_(\d+)", d))]
    return max(found) + 1 if found else 0


class Logger:
    """Base class: a directory per run and `log_metrics(metrics, step)`."""

    def __init__(self, save_dir: str = ".", name: str | None = "lightning_logs", version: int | str | None = None) -> None:
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def name(self) -> str:
        return self._name

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def log_dir(self) -> str:
        v = self.version
        return os.path.join(self.root_dir, v if isinstance(v, str) else f"version_{v}")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.save()


class CSVLogger(Logger):
    """Writes every logged row to ``metrics.csv`` (columns: the metric names, "epoch", "step"),
    and the hyperparameters to ``hparams.csv``."""

    def __init__(self, save_dir: str = ".", name: str | None = "lightning_logs", version: int | str | None = None,
                 flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name, version)
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] = []
        self._written = 0  # rows already in the file under the current header
        self._flush_every = flush_logs_every_n_steps

    @property
    def metrics_file_path(self) -> str:
        return os.path.join(self.log_dir, "metrics.csv")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = dict(metrics)
        row["step"] = step
        self._rows.append(row)
        if step is not None and (step + 1) % self._flush_every == 0:
            self.save()

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if not params:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "hparams.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "value"])
            for k, v in params.items():
                w.writerow([k, repr(v)])

    def save(self) -> None:
        if len(self._rows) == self._written:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        new_keys = [k for r in self._rows[self._written:] for k in r if k not in self._keys]
        if new_keys:  # a new column: rewrite the whole file under the wider header
            for k in dict.fromkeys(new_keys):
                self._keys.append(k)
            start, mode = 0, "w"
        else:
            start, mode = self._written, "a"
        with open(self.metrics_file_path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._keys)
            if mode == "w":
                w.writeheader()
            w.writerows(self._rows[start:])
        self._written = len(self._rows)


class TensorBoardLogger(Logger):
    """TensorBoard event files through ``torch.utils.tensorboard`` (needs the tensorboard package)."""

    def __init__(self, save_dir: str = ".", name: str | None = "lightning_logs", version: int | str | None = None) -> None:
        super().__init__(save_dir, name, version)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard missing
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the `tensorboard` package: pip install tensorboard (or use CSVLogger)"
            ) from e
        self._writer_cls = SummaryWriter
        self._writer: Any = None

    @property
    def experiment(self) -> Any:
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=self.log_dir)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.experiment.add_scalar(k, v, step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if params:
            self.experiment.add_text("hparams", repr(dict(params)))

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
