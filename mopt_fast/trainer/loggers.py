"""Loggers: CSV (always available) and TensorBoard (when tensorboard is installed), writing the files
Lightning's loggers write, where they write them:

- ``<save_dir>/<name>/version_<n>/metrics.csv``: one row per `log_metrics` call, the columns the
  sorted metric names plus "step" (CSVLogger);
- ``hparams.yaml`` beside it: the module's `save_hyperparameters` values, written with PyYAML as
  Lightning writes them (both loggers; TensorBoardLogger writes ``{}`` when there are none);
- TensorBoard event files, with the hyperparameters in TensorBoard's HPARAMS tab and the
  ``hp_metric`` placeholder Lightning adds.

As in Lightning, only the process of global rank 0 writes (the rank is read from the launcher's
environment); on the others `experiment` is a stand-in that does nothing.
"""
from __future__ import annotations

import ast
import copy
import csv
import functools
import logging
import os
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any

import torch

from mopt_fast.seed import _env_rank

__all__ = ["Logger", "CSVLogger", "TensorBoardLogger", "log_hyperparams_at_start",
           "save_hparams_to_yaml", "load_hparams_from_yaml", "load_hparams_from_tags_csv"]

log = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return (_env_rank() or 0) == 0


def _rank_zero_only(fn: Callable) -> Callable:
    """`fn` runs on global rank 0 only (elsewhere it returns None), as Lightning's loggers."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _is_rank_zero():
            return fn(*args, **kwargs)
        return None

    return wrapped


class _DummyExperiment:
    """The `experiment` of a logger on a rank other than 0: every call does nothing."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, _: Any) -> Callable:
        return self.nop

    def __getitem__(self, idx: int) -> _DummyExperiment:
        return self

    def __setitem__(self, *args: Any, **kwargs: Any) -> None:
        pass


# -- hyperparameters as files (lightning.pytorch.core.saving) --------------------------------------
def _yaml() -> Any:
    try:
        import yaml
    except ImportError as e:  # PyYAML is a dependency of mopt_fast; this is a broken install
        raise ModuleNotFoundError("writing hparams.yaml needs PyYAML: pip install pyyaml") from e
    return yaml


def _omegaconf() -> Any:
    try:
        import omegaconf
    except ImportError:
        return None
    return omegaconf


def _dictconfigs_to_containers(obj: Any, omegaconf: Any) -> Any:
    if isinstance(obj, omegaconf.DictConfig):
        return omegaconf.OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return type(obj)({k: _dictconfigs_to_containers(v, omegaconf) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_dictconfigs_to_containers(v, omegaconf) for v in obj)
    return obj


def save_hparams_to_yaml(config_yaml: str, hparams: dict | Namespace, use_omegaconf: bool = True) -> None:
    """Write `hparams` to the YAML file `config_yaml` as Lightning does: through OmegaConf when it is
    installed, else with ``yaml.dump``, values YAML cannot dump skipped with a warning."""
    if not os.path.isdir(os.path.dirname(config_yaml)):
        raise RuntimeError(f"Missing folder: {os.path.dirname(config_yaml)}.")
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    else:
        from mopt_fast.module import AttributeDict

        if isinstance(hparams, AttributeDict):
            hparams = dict(hparams)
    yaml = _yaml()
    omegaconf = _omegaconf() if use_omegaconf else None
    if omegaconf is not None:
        hparams = _dictconfigs_to_containers(copy.deepcopy(hparams), omegaconf)
        with open(config_yaml, "w", encoding="utf-8") as fp:
            try:
                omegaconf.OmegaConf.save(hparams, fp)
                return
            except (omegaconf.errors.UnsupportedValueType, omegaconf.errors.ValidationError):
                pass
    if not isinstance(hparams, dict):
        raise TypeError("hparams must be dictionary")
    allowed = {}
    for k, v in hparams.items():
        try:
            v = v.name if isinstance(v, Enum) else v
            yaml.dump(v)
        except (TypeError, ValueError):
            warnings.warn(f"Skipping '{k}' parameter because it is not possible to safely dump to YAML.", stacklevel=2)
            hparams[k] = type(v).__name__
        else:
            allowed[k] = v
    with open(config_yaml, "w", newline="") as fp:
        yaml.dump(allowed, fp)


def load_hparams_from_yaml(config_yaml: str, use_omegaconf: bool = True) -> dict[str, Any]:
    """The hyperparameters in a YAML file (a DictConfig when OmegaConf is installed), {} (with a
    warning) when the file is missing."""
    if not os.path.exists(config_yaml):
        warnings.warn(f"Missing Tags: {config_yaml}.", RuntimeWarning, stacklevel=2)
        return {}
    with open(config_yaml) as fp:
        hparams = _yaml().full_load(fp)
    omegaconf = _omegaconf() if use_omegaconf else None
    if omegaconf is not None:
        try:
            return omegaconf.OmegaConf.create(hparams)
        except (omegaconf.errors.UnsupportedValueType, omegaconf.errors.ValidationError):
            pass
    return hparams


def load_hparams_from_tags_csv(tags_csv: str) -> dict[str, Any]:
    """The hyperparameters in a "key,value" CSV file, values read as Python literals when they are."""
    if not os.path.exists(tags_csv):
        warnings.warn(f"Missing Tags: {tags_csv}.", RuntimeWarning, stacklevel=2)
        return {}

    def convert(val: str) -> Any:
        try:
            return ast.literal_eval(val)
        except (ValueError, SyntaxError):
            return val

    with open(tags_csv, newline="") as fp:
        return {row[0]: convert(row[1]) for row in list(csv.reader(fp, delimiter=","))[1:]}


def _convert_params(params: dict[str, Any] | Namespace | None) -> dict[str, Any]:
    if isinstance(params, Namespace):
        params = vars(params)
    return {} if params is None else params


def _flatten_dict(params: MutableMapping, delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """``{'a': {'b': 'c'}} -> {'a/b': 'c'}``; dataclasses, Namespaces and lists of dicts are opened too."""
    result: dict[str, Any] = {}
    for k, v in params.items():
        new_key = parent_key + delimiter + str(k) if parent_key else str(k)
        if is_dataclass(v) and not isinstance(v, type):
            v = asdict(v)
        elif isinstance(v, Namespace):
            v = vars(v)
        if isinstance(v, MutableMapping):
            result = {**result, **_flatten_dict(v, parent_key=new_key, delimiter=delimiter)}
        elif isinstance(v, list) and all(isinstance(item, MutableMapping) for item in v):
            for i, item in enumerate(v):
                result = {**result, **_flatten_dict(item, parent_key=f"{new_key}/{i}", delimiter=delimiter)}
        else:
            result[new_key] = v
    return result


def _sanitize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Numbers, strings, bools and tensors kept; numpy scalars unwrapped; the rest as str."""
    try:
        import numpy as np
    except ImportError:  # numpy is optional
        np = None
    for k in params:
        if np is not None and isinstance(params[k], (np.bool_, np.integer, np.floating)):
            params[k] = params[k].item()
        if type(params[k]) not in [bool, int, float, str, torch.Tensor]:
            params[k] = str(params[k])
    return {k: str(v) if hasattr(v, "ndim") and v.ndim > 1 else v for k, v in params.items()}


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


def _next_version(versions_root: str) -> int:
    """One past the highest ``version_<n>`` folder in `versions_root` (0 if none), as Lightning counts."""
    try:
        names = os.listdir(versions_root)
    except OSError:
        return 0
    existing = []
    for name in names:
        if os.path.isdir(os.path.join(versions_root, name)) and name.startswith("version_"):
            dir_ver = name.split("_")[1]
            if dir_ver.isdigit():
                existing.append(int(dir_ver))
    return max(existing) + 1 if existing else 0


# -- the loggers --------------------------------------------------------------------------------
class Logger:
    """Base class for loggers. A subclass implements `log_metrics` (and `log_hyperparams`, a no-op
    here); `name`, `version` and the folders are Lightning's: ``<save_dir>/<name>/version_<n>``."""

    def __init__(self, save_dir: str | os.PathLike = ".", name: str | None = "lightning_logs",
                 version: int | str | None = None) -> None:
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
        return os.path.join(self.save_dir, self.name)

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def log_dir(self) -> str:
        v = self.version
        return os.path.join(self.root_dir, v if isinstance(v, str) else f"version_{v}")

    @property
    def group_separator(self) -> str:
        return "/"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        pass

    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.save()


class _ExperimentWriter:
    """The files of a CSVLogger run: metrics.csv (rows buffered until `save`) and hparams.yaml."""

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(self.log_dir, self.NAME_METRICS_FILE)
        if os.path.exists(self.log_dir) and os.listdir(self.log_dir):
            warnings.warn(
                f"Experiment logs directory {self.log_dir} exists and is not empty. Previous log files in this "
                "directory will be deleted when the new ones are saved!",
                stacklevel=4,
            )
            if os.path.isfile(self.metrics_file_path):
                os.remove(self.metrics_file_path)
        os.makedirs(self.log_dir, exist_ok=True)

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
        file_exists = os.path.isfile(self.metrics_file_path)
        if new_keys and file_exists:
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
            with open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.metrics_file_path, "a" if file_exists else "w", newline="") as f:
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
            os.makedirs(self.root_dir, exist_ok=True)
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
            step = len(self.experiment.metrics)
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


def log_hyperparams_at_start(trainer: Any) -> None:
    """What Lightning's Trainer does with the loggers once on_fit_start has run (and at the start
    of validate/test/predict): each logger gets the initial hyperparameters of the module (when
    `save_hyperparameters` was called with ``logger=True``) and of the data module, merged (the
    same key with different values is Lightning's error), the model for `log_graph`, and a `save`.
    Rank 0 only."""
    if not trainer.loggers or not trainer.is_global_zero:
        return
    module, datamodule = trainer.lightning_module, trainer.datamodule
    log_model = getattr(module, "_log_hyperparams", False)
    log_dm = datamodule is not None and getattr(datamodule, "_log_hyperparams", False)
    hparams = None
    if log_model and log_dm:
        model_hparams, dm_hparams = dict(module.hparams_initial), dict(datamodule.hparams_initial)
        clash = [k for k in model_hparams.keys() & dm_hparams.keys() if k != "_class_path" and (
            type(model_hparams[k]) is not type(dm_hparams[k])
            or (isinstance(model_hparams[k], torch.Tensor) and model_hparams[k] is not dm_hparams[k])
            or (not isinstance(model_hparams[k], torch.Tensor) and model_hparams[k] != dm_hparams[k])
        )]
        if clash:
            raise RuntimeError(
                f"Error while merging hparams: the keys {clash} are present in both the LightningModule's and "
                "LightningDataModule's hparams but have different values."
            )
        hparams = {**model_hparams, **dm_hparams}
    elif log_model:
        hparams = dict(module.hparams_initial)
    elif log_dm:
        hparams = dict(datamodule.hparams_initial)
    if hparams is not None:
        hparams = {k: v for k, v in hparams.items() if k != "_class_path"}
    for lg in trainer.loggers:
        if hparams is not None:
            lg.log_hyperparams(hparams)
        if hasattr(lg, "log_graph"):
            lg.log_graph(module)
        if hasattr(lg, "save"):
            lg.save()
