"""MLFlowLogger: MLflow runs, as Lightning 2.6's ``lightning.pytorch.loggers.MLFlowLogger``.

The mlflow package (``mlflow`` or ``mlflow-skinny``) is imported when the logger is made (a missing
one is a ModuleNotFoundError naming it), never by ``import mopt_fast``. The run is created on first
use in the experiment `experiment_name` (created if missing); hyperparameters are logged as params
(flattened, values cut to 250 characters), metrics with ``log_batch`` at their step; `finalize`
marks the run FINISHED or FAILED. With ``log_model`` checkpoints are logged as artifacts.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from mopt_fast.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_params,
    _DummyExperiment,
    _flatten_dict,
    _is_rank_zero,
    _rank_zero_only,
    _scan_checkpoints,
)

__all__ = ["MLFlowLogger"]

log = logging.getLogger(__name__)

LOCAL_FILE_URI_PREFIX = "file:"


def _resolve_tags() -> Callable[[Any], Any]:
    """mlflow's `resolve_tags` (the run's source, user and git tags), wherever this version has it."""
    from mlflow.tracking import context

    if hasattr(context, "resolve_tags"):
        return context.resolve_tags
    if hasattr(context, "registry"):
        from mlflow.tracking.context.registry import resolve_tags

        return resolve_tags
    return lambda tags: tags


class MLFlowLogger(Logger):
    """Logs to MLflow; the arguments are Lightning's.

    Args:
        experiment_name: the experiment (created when missing).
        run_name: the run's name (the ``mlflow.runName`` tag).
        tracking_uri: where MLflow tracks (default ``$MLFLOW_TRACKING_URI``, else ``file:<save_dir>``).
        tags: tags of the run.
        save_dir: the local folder when no tracking URI is given.
        log_model: log checkpoints as artifacts: True at the end of training (every checkpoint when
            ``save_top_k == -1``), "all" as each is saved.
        prefix: put before every metric name, joined with "-".
        artifact_location: where a new experiment keeps its artifacts.
        run_id: log to this existing run.
        synchronous: passed to ``log_batch`` (mlflow >= 2.8).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = os.getenv("MLFLOW_TRACKING_URI"),
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ModuleNotFoundError(
                "MLFlowLogger needs the `mlflow` package, which is not installed: pip install mlflow "
                "(or mlflow-skinny)"
            ) from exc
        super().__init__()
        if not tracking_uri:
            tracking_uri = f"{LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = tags
        self._log_model = log_model
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callback: Any = None
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._initialized = False
        self._mlflow_client = MlflowClient(tracking_uri)

    @property
    def experiment(self) -> Any:
        """The ``MlflowClient``, with the experiment and the run created on first use; a stand-in on
        ranks other than 0."""
        if not _is_rank_zero():
            return _DummyExperiment()
        if self._initialized:
            return self._mlflow_client
        import mlflow

        mlflow.set_tracking_uri(self._tracking_uri)
        client = self._mlflow_client
        if self._run_id is not None:
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
            self._initialized = True
            return client
        if self._experiment_id is None:
            expt = client.get_experiment_by_name(self._experiment_name)
            if expt is not None and expt.lifecycle_stage != "deleted":
                self._experiment_id = expt.experiment_id
            else:
                log.warning(f"Experiment with name {self._experiment_name} not found. Creating it.")
                self._experiment_id = client.create_experiment(name=self._experiment_name,
                                                               artifact_location=self._artifact_location)
        if self._run_name is not None:
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

            self.tags = self.tags or {}
            if MLFLOW_RUN_NAME in self.tags:
                log.warning(
                    f"The tag {MLFLOW_RUN_NAME} is found in tags. The value will be overridden by {self._run_name}."
                )
            self.tags[MLFLOW_RUN_NAME] = self._run_name
        run = client.create_run(experiment_id=self._experiment_id, tags=_resolve_tags()(self.tags))
        self._run_id = run.info.run_id
        self._initialized = True
        return client

    @property
    def run_id(self) -> str | None:
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from mlflow.entities import Param

        params_list = [Param(key=k, value=str(v)[:250]) for k, v in _flatten_dict(_convert_params(params)).items()]
        for idx in range(0, len(params_list), 100):  # MLflow takes at most 100 params per batch
            self.experiment.log_batch(run_id=self.run_id, params=params_list[idx:idx + 100], **self._log_batch_kwargs)

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        metrics_list = []
        timestamp_ms = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, str):
                log.warning(f"Discarding metric with string value {k}={v}.")
                continue
            new_k = re.sub("[^a-zA-Z0-9_/. -]+", "", k)
            if k != new_k:
                warnings.warn(
                    "MLFlow only allows '_', '/', '.' and ' ' special characters in metric name."
                    f" Replacing {k} with {new_k}.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                k = new_k
            metrics_list.append(Metric(key=k, value=v, timestamp=timestamp_ms, step=step or 0))
        self.experiment.log_batch(run_id=self.run_id, metrics=metrics_list, **self._log_batch_kwargs)

    @_rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        status = {"success": "FINISHED", "failed": "FAILED", "finished": "FINISHED"}.get(status, status)
        if self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        if self.experiment.get_run(self.run_id):
            self.experiment.set_terminated(self.run_id, status)

    @property
    def save_dir(self) -> str | None:  # type: ignore[override]
        """The local folder of a ``file:`` tracking URI, else None."""
        if self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX):
            return self._tracking_uri[len(LOCAL_FILE_URI_PREFIX):]
        return None

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The experiment id (Lightning's)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:  # type: ignore[override]
        """The run id."""
        return self.run_id

    @property
    def log_dir(self) -> str | None:  # type: ignore[override]
        return None  # Lightning's Logger default: the Trainer's log_dir is then save_dir

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or self._log_model is True and checkpoint_callback.save_top_k == -1:
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        import yaml

        for t, p, s, _ in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": s.item() if isinstance(s, torch.Tensor) else s,
                "original_filename": Path(p).name,
                "Checkpoint": {
                    k: getattr(checkpoint_callback, k)
                    for k in ("monitor", "mode", "save_last", "save_top_k", "save_weights_only",
                              "_every_n_train_steps", "_every_n_val_epochs")
                    if hasattr(checkpoint_callback, k)
                },
            }
            aliases = ["latest", "best"] if p == checkpoint_callback.best_model_path else ["latest"]
            artifact_path = Path(p).stem
            self.experiment.log_artifact(self._run_id, p, artifact_path)
            with tempfile.TemporaryDirectory() as tmp_dir:
                with open(f"{tmp_dir}/metadata.yaml", "w") as f:
                    yaml.dump(metadata, f, default_flow_style=False)
                with open(f"{tmp_dir}/aliases.txt", "w") as f:
                    f.write(str(aliases))
                self.experiment.log_artifacts(self._run_id, tmp_dir, artifact_path)
            self._logged_model_time[p] = t
