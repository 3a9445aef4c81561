"""TensorBoardLogger: event files with the hyperparameters in TensorBoard's HPARAMS tab (and the
``hp_metric`` placeholder Lightning adds), plus ``hparams.yaml``, as Lightning writes them."""
from __future__ import annotations

import logging
import os
import warnings
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import torch

from mopt_fast.core.saving import save_hparams_to_yaml
from mopt_fast.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_params,
    _DummyExperiment,
    _flatten_dict,
    _is_rank_zero,
    _rank_zero_only,
    _sanitize_params,
)

__all__ = ["TensorBoardLogger"]

log = logging.getLogger(__name__)


class TensorBoardLogger(Logger):
    """TensorBoard event files under ``<save_dir>/<name>/<version>[/<sub_dir>]`` (needs the
    tensorboard package), plus ``hparams.yaml``, as Lightning's TensorBoardLogger.

    Args:
        save_dir, name, version: as CSVLogger.
        log_graph: add the model's graph, traced from ``model.example_input_array``.
        default_hp_metric: log ``hp_metric = -1`` with the hyperparameters (TensorBoard's HPARAMS tab
            shows runs with a metric only).
        prefix: put before every metric name, joined with "-".
        sub_dir: a folder below the version folder.
        **kwargs: passed to ``torch.utils.tensorboard.SummaryWriter`` (e.g. ``flush_secs``).
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, log_graph: bool = False, default_hp_metric: bool = True,
                 prefix: str = "", sub_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, name, version)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard missing
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the `tensorboard` package: pip install tensorboard (or use CSVLogger)"
            ) from e
        self._writer_cls = SummaryWriter
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Any = None
        self.hparams: dict[str, Any] = {}

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def log_dir(self) -> str:
        log_dir = super().log_dir
        if isinstance(self.sub_dir, str):
            log_dir = os.path.join(log_dir, self.sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter``; a stand-in on ranks other than 0."""
        if not _is_rank_zero():
            return _DummyExperiment()
        if self._experiment is None:
            if self.root_dir:
                os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = self._writer_cls(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, dict):
                self.experiment.add_scalars(k, v, step)
            else:
                try:
                    self.experiment.add_scalar(k, v, step)
                except Exception as ex:
                    raise ValueError(
                        f"\n you tried to log {v} which is currently not supported. Try a dict or a scalar/tensor."
                    ) from ex

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None,
                        step: int | None = None) -> None:
        """The hyperparameters (kept for hparams.yaml) into TensorBoard's HPARAMS tab, with `metrics`
        (default ``{"hp_metric": -1}`` unless ``default_hp_metric=False``)."""
        params = _convert_params(params)
        self.hparams.update(params)
        params = _sanitize_params(_flatten_dict(params))
        if metrics is None:
            if self._default_hp_metric:
                metrics = {"hp_metric": -1}
        elif not isinstance(metrics, dict):
            metrics = {"hp_metric": metrics}
        if metrics:
            self.log_metrics(metrics, step)
            from torch.utils.tensorboard.summary import hparams

            exp, ssi, sei = hparams(params, metrics)
            writer = self.experiment._get_file_writer()
            writer.add_summary(exp, step)
            writer.add_summary(ssi, step)
            writer.add_summary(sei, step)

    @_rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        if not self._log_graph:
            return
        input_array = getattr(model, "example_input_array", None) if input_array is None else input_array
        if input_array is None:
            warnings.warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute is not "
                "set or `input_array` was not given.",
                stacklevel=2,
            )
        elif not isinstance(input_array, (torch.Tensor, tuple)):
            warnings.warn(
                "Could not log computational graph to TensorBoard: The `input_array` or `model.example_input_array` "
                f"has type {type(input_array)} which can't be traced by TensorBoard. Make the input array a tuple "
                "representing the positional arguments to the model's `forward()` implementation.",
                stacklevel=2,
            )
        elif hasattr(model, "_apply_batch_transfer_handler"):  # a LightningModule: moved as a batch is (Lightning's)
            input_array = model._on_before_batch_transfer(input_array)  # type: ignore[operator]
            input_array = model._apply_batch_transfer_handler(input_array)  # type: ignore[operator]
            self.experiment.add_graph(model, input_array)
        else:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            if isinstance(input_array, torch.Tensor):
                input_array = input_array.to(device)
            else:
                input_array = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in input_array)
            self.experiment.add_graph(model, input_array)

    @_rank_zero_only
    def save(self) -> None:
        """Flushes the events; writes hparams.yaml once the folder exists, if it is not there yet."""
        self.experiment.flush()
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(hparams_file):
            save_hparams_to_yaml(hparams_file, self.hparams)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()
            self.experiment.close()
        if status == "success":
            self.save()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state

