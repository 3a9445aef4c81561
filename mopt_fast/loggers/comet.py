"""CometLogger: Comet experiments, as Lightning 2.6's ``lightning.pytorch.loggers.CometLogger``.

The comet_ml package is imported when the logger is made (a missing one is a ModuleNotFoundError
naming it), never by ``import mopt_fast``. The experiment is started with ``comet_ml.start`` on
rank 0 when the logger is made; metrics and hyperparameters go through the experiment's own
framework entry points (tagged "pytorch-lightning", as Lightning tags them, so an uploaded
experiment looks the same), the "epoch" metric as the epoch of the others.

Offline, as in Lightning: ``online=False`` makes a *disabled* experiment (nothing is written);
leave `online` unset and set ``COMET_START_ONLINE=false`` (or comet's config) to get an offline
archive in `offline_directory`.
"""
from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any, Literal

import torch

from mopt_fast.loggers.logger import Logger, _convert_params, _DummyExperiment, _is_rank_zero, _rank_zero_only
from mopt_fast.seed import _env_rank

__all__ = ["CometLogger"]

log = logging.getLogger(__name__)

# What Lightning's logger tells Comet it is; the same here so that the two log the same experiment.
FRAMEWORK_NAME = "pytorch-lightning"

Mode = Literal["get_or_create", "get", "create"]


def _require_comet() -> None:
    try:
        import comet_ml  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(
            "CometLogger needs the `comet_ml` package (comet-ml>=3.44.4), which is not installed: pip install comet-ml"
        ) from exc


def _take_deprecated(kwargs: dict[str, Any], old: str, new: str, current: Any) -> Any:
    """Lightning's handling of an old argument name: a warning, and the old value unless the new
    one was given too (then another warning, and the old one stays in `kwargs`)."""
    log.warning(f"The parameter `{old}` is deprecated, please use `{new}` instead.")
    if current is None:
        return kwargs.pop(old)
    log.warning(f"You specified both `{old}` and `{new}` parameters, please use `{new}` only")
    return current


class CometLogger(Logger):
    """Logs to a Comet experiment; the arguments are Lightning's (keyword-only).

    Args:
        api_key: the Comet API key (else comet's config / ``COMET_API_KEY``).
        workspace: the workspace (else the default one).
        project: the project (else comet's default, "Uncategorized").
        experiment_key: the key of an experiment to continue, or of the new one.
        mode: "get_or_create", "get" or "create" (how ``comet_ml.start`` finds the experiment).
        online: False for a disabled experiment that logs nothing (see the module docstring).
        prefix: put before every metric name by Comet.
        **kwargs: ``comet_ml.ExperimentConfig`` arguments (`name`, `offline_directory`, `log_code`, ...);
            the old names `experiment_name`, `project_name`, `offline` and `save_dir` are taken with a warning.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        experiment_key: str | None = None,
        mode: Mode | None = None,
        online: bool | None = None,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        _require_comet()
        super().__init__()
        if "experiment_name" in kwargs:
            kwargs["name"] = _take_deprecated(kwargs, "experiment_name", "name", kwargs.get("name"))
        if "project_name" in kwargs:
            project = _take_deprecated(kwargs, "project_name", "project", project)
        if "offline" in kwargs:
            # Lightning's own mapping: the value of `offline` becomes `online` as it is (kept for the same behaviour).
            online = _take_deprecated(kwargs, "offline", "online", online)
        if "save_dir" in kwargs:
            kwargs["offline_directory"] = _take_deprecated(kwargs, "save_dir", "offline_directory",
                                                           kwargs.get("offline_directory"))
        self._api_key = api_key
        self._workspace = workspace
        self._project_name = project
        self._experiment_key = experiment_key
        self._mode = mode
        self._online = online
        self._prefix = prefix
        self._kwargs = kwargs
        self._experiment: Any = None
        # The logger logs what it means to; comet's own framework patching would log it twice.
        os.environ["COMET_DISABLE_AUTO_LOGGING"] = "1"
        import comet_ml

        config = dict(kwargs, disabled=True) if online is False else dict(kwargs)
        self._comet_config = comet_ml.ExperimentConfig(**config)
        rank = _env_rank()
        if rank is not None and rank != 0:
            return
        self._create_experiment()

    def _create_experiment(self) -> None:
        import comet_ml

        self._experiment = comet_ml.start(
            api_key=self._api_key, workspace=self._workspace, project=self._project_name,
            experiment_key=self._experiment_key, mode=self._mode, online=self._online,
            experiment_config=self._comet_config,
        )
        if self._experiment is None:
            raise comet_ml.exceptions.ExperimentNotFound("Failed to create Comet experiment.")
        self._experiment_key = self._experiment.get_key()
        self._project_name = self._experiment.project_name
        self._experiment.log_other("Created from", FRAMEWORK_NAME)

    def __getstate__(self) -> dict[str, Any]:
        """A pickled logger (e.g. for spawned processes) continues the same experiment by its key."""
        state = self.__dict__.copy()
        state["_experiment_key"] = self._experiment.get_key() if self._experiment is not None else None
        state["_experiment"] = None
        return state

    @property
    def experiment(self) -> Any:
        """The comet_ml experiment (started again if it was dropped, e.g. after pickling); a stand-in
        on ranks other than 0."""
        if not _is_rank_zero():
            return _DummyExperiment()
        if not self._experiment:
            self._create_experiment()
        return self._experiment

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Nested dictionaries are flattened by Comet ("a|b")."""
        self.experiment.__internal_api__log_parameters__(
            parameters=_convert_params(params), framework=FRAMEWORK_NAME, flatten_nested=True, source="manual")

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, torch.Tensor | float], step: int | None = None) -> None:
        values = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        epoch = values.pop("epoch", None)
        self.experiment.__internal_api__log_metrics__(
            values, step=step, epoch=epoch, prefix=self._prefix, framework=FRAMEWORK_NAME)

    def log_graph(self, model: torch.nn.Module, input_array: torch.Tensor | None = None) -> None:
        """The model's description as the experiment's graph (only once the experiment exists)."""
        if self._experiment is not None:
            self._experiment.__internal_api__set_model_graph__(graph=model, framework=FRAMEWORK_NAME)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        """Flushes, but does not end, the experiment: it can still be logged to after training
        (``logger.experiment.end()`` ends it, and writes the offline archive)."""
        if self._experiment is not None:
            self._experiment.flush()

    @property
    def save_dir(self) -> str | None:  # type: ignore[override]
        """Comet's offline directory (its default when not given)."""
        return self._comet_config.offline_directory

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The project (Lightning's)."""
        return self._project_name

    @property
    def version(self) -> str | None:  # type: ignore[override]
        """The experiment key, once the experiment exists."""
        return self._experiment.get_key() if self._experiment is not None else None

    @property
    def root_dir(self) -> str | None:  # type: ignore[override]
        return None  # Lightning's Logger default

    @property
    def log_dir(self) -> str | None:  # type: ignore[override]
        return None  # Lightning's Logger default: the Trainer's log_dir is then save_dir
