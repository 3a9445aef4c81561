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

__all__ = ["Logger"]

import functools
import inspect
import json
import logging
import os
from argparse import Namespace
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, is_dataclass
from typing import Any

import torch

from mopt_fast.core.saving import filesystem
from mopt_fast.seed import _env_rank

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
    numpy_scalars: tuple[type, ...] = ()
    try:
        import numpy as np

        numpy_scalars = (np.bool_, np.integer, np.floating)
    except ImportError:  # numpy is optional
        pass
    for k in params:
        if numpy_scalars and isinstance(params[k], numpy_scalars):
            params[k] = params[k].item()
        if type(params[k]) not in [bool, int, float, str, torch.Tensor]:
            params[k] = str(params[k])
    return {k: str(v) if hasattr(v, "ndim") and v.ndim > 1 else v for k, v in params.items()}


def _sanitize_callable_params(params: dict[str, Any]) -> dict[str, Any]:
    """A class as its name; a callable as what it returns when called without arguments (its name
    when that is callable too or the call fails), as Lightning's loggers store them."""

    def sanitize(val: Any) -> Any:
        if inspect.isclass(val):
            return val.__name__
        if callable(val):
            try:
                out = val()
                return val.__name__ if callable(out) else out
            except Exception:  # any failure: the name, as Lightning
                return getattr(val, "__name__", None)
        return val

    return {key: sanitize(val) for key, val in params.items()}


def _convert_json_serializable(params: dict[str, Any]) -> dict[str, Any]:
    """Values JSON cannot encode as their str()."""

    def serializable(value: Any) -> bool:
        if value is None or isinstance(value, (bool, int, float, str, list, dict)):
            return True
        try:
            json.dumps(value)
            return True
        except (TypeError, OverflowError):
            return False

    return {k: v if serializable(v) else str(v) for k, v in params.items()}


def _scan_checkpoints(checkpoint_callback: Any, logged_model_time: dict[str, float]) -> list[tuple[float, str, Any, str]]:
    """The checkpoint files of `checkpoint_callback` not logged yet (or rewritten since), oldest
    first, as ``(mtime, path, score, tag)``: Lightning's `_scan_checkpoints`, for log_model."""
    checkpoints: dict[str, tuple[Any, str]] = {}
    if hasattr(checkpoint_callback, "last_model_path") and hasattr(checkpoint_callback, "current_score"):
        checkpoints[checkpoint_callback.last_model_path] = (checkpoint_callback.current_score, "latest")
    if hasattr(checkpoint_callback, "best_model_path") and hasattr(checkpoint_callback, "best_model_score"):
        checkpoints[checkpoint_callback.best_model_path] = (checkpoint_callback.best_model_score, "best")
    if hasattr(checkpoint_callback, "best_k_models"):
        for key, value in checkpoint_callback.best_k_models.items():
            checkpoints[key] = (value, "best_k")
    found = sorted((os.stat(p).st_mtime, p, s, tag) for p, (s, tag) in checkpoints.items() if os.path.isfile(p))
    return [c for c in found if c[1] not in logged_model_time or logged_model_time[c[1]] < c[0]]


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> Mapping[str, Any]:
    if not prefix:
        return metrics
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


def _next_version(versions_root: str) -> int:
    """One past the highest ``version_<n>`` folder in `versions_root` (0 if none), as Lightning counts;
    `versions_root` may be an fsspec URL."""
    fs = filesystem(versions_root)
    if not fs.isdir(versions_root):
        return 0
    existing = []
    for path in fs.ls(versions_root, detail=False):
        name = os.path.basename(path.rstrip("/"))
        if fs.isdir(path) and name.startswith("version_"):
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


