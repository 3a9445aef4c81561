"""CSVLogger: ``<save_dir>/<name>/version_<n>/metrics.csv`` (one row per `log_metrics` call, the
columns the sorted metric names plus "step") and ``hparams.yaml`` beside it, as Lightning writes them."""
from __future__ import annotations

import csv
import logging
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import torch

from mopt_fast.core.saving import filesystem, save_hparams_to_yaml
from mopt_fast.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_params,
    _DummyExperiment,
    _is_rank_zero,
    _rank_zero_only,
)

__all__ = ["CSVLogger"]

log = logging.getLogger(__name__)


class _ExperimentWriter:
    """The files of a CSVLogger run: metrics.csv (rows buffered until `save`) and hparams.yaml."""

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.log_dir = log_dir
        self._fs = filesystem(log_dir)  # fsspec's for a URL (``memory://...``), as Lightning's
        self.metrics_file_path = os.path.join(self.log_dir, self.NAME_METRICS_FILE)
        if self._fs.exists(self.log_dir) and self._fs.ls(self.log_dir, detail=False):
            warnings.warn(
                f"Experiment logs directory {self.log_dir} exists and is not empty. Previous log files in this "
                "directory will be deleted when the new ones are saved!",
                stacklevel=4,
            )
            if self._fs.isfile(self.metrics_file_path):
                self._fs.rm_file(self.metrics_file_path)
        self._fs.makedirs(self.log_dir, exist_ok=True)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        if step is None:
            step = len(self.metrics)
        metrics = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics_dict.items()}
        metrics["step"] = step
        self.metrics.append(metrics)

    def save(self) -> None:
        """Appends the buffered rows; a new column rewrites the file under the wider header."""
        if not self.metrics:
            return
        current = set().union(*self.metrics)
        new_keys = current - set(self.metrics_keys)
        self.metrics_keys.extend(new_keys)
        self.metrics_keys.sort()
        fs = self._fs
        file_exists = fs.isfile(self.metrics_file_path)
        if new_keys and file_exists:
            with fs.open(self.metrics_file_path, "r", newline="") as f:
                rows = list(csv.DictReader(f))
            with fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        with fs.open(self.metrics_file_path, "a" if file_exists else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            if not file_exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class CSVLogger(Logger):
    """Logs to ``<save_dir>/<name>/<version>/``: ``metrics.csv`` and ``hparams.yaml``, as Lightning's
    CSVLogger.

    Args:
        save_dir: the root folder.
        name: the experiment's folder (None or "": none).
        version: an int (``version_<n>``), a folder name, or None: the next free ``version_<n>``.
        prefix: put before every metric name, joined with "-".
        flush_logs_every_n_steps: rows are written to the file every this many steps (and at the
            end of each epoch and of the fit).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name, version)
        self._prefix = prefix
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._experiment: _ExperimentWriter | None = None

    @property
    def experiment(self) -> _ExperimentWriter | _DummyExperiment:
        """The writer (`log_metrics`, `log_hparams`, `save`); a stand-in on ranks other than 0."""
        if not _is_rank_zero():
            return _DummyExperiment()
        if self._experiment is None:
            filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def metrics_file_path(self) -> str:
        return os.path.join(self.log_dir, _ExperimentWriter.NAME_METRICS_FILE)

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None) -> None:
        self.experiment.log_hparams(_convert_params(params))

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            experiment = self.experiment
            assert isinstance(experiment, _ExperimentWriter)  # rank 0's (this method runs on rank 0 only)
            step = len(experiment.metrics)
        self.experiment.log_metrics(metrics, step)
        if (step + 1) % self._flush_logs_every_n_steps == 0:
            self.save()

    @_rank_zero_only
    def save(self) -> None:
        self.experiment.save()

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return
        self.save()

