"""WandbLogger: Weights & Biases runs, as Lightning 2.6's ``lightning.pytorch.loggers.WandbLogger``.

The wandb package is imported when the logger is made (a missing one is a ModuleNotFoundError
naming it), never by ``import mopt_fast``. Metrics go to ``run.log`` with the step under
``trainer/global_step`` (the run's step metric, defined when the run starts), hyperparameters to
``run.config``; with ``log_model`` the checkpoints of ModelCheckpoint are logged as artifacts.
``WANDB_MODE=offline`` (or ``offline=True``) writes the run under `save_dir` only.
"""
from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_json_serializable,
    _convert_params,
    _DummyExperiment,
    _is_rank_zero,
    _rank_zero_only,
    _sanitize_callable_params,
    _scan_checkpoints,
)

__all__ = ["WandbLogger"]


def _require_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError(
            "WandbLogger needs the `wandb` package, which is not installed: pip install wandb"
        ) from exc


class WandbLogger(Logger):
    """Logs to Weights & Biases; the arguments are Lightning's.

    Args:
        name: the run's display name.
        save_dir: where wandb writes its files (default "."); `dir` is its alias.
        version / id: the run id, to resume a run.
        offline: do not upload (then `log_model` must be False).
        anonymous: allow anonymous logging.
        project: the project (default ``$WANDB_PROJECT`` or "lightning_logs").
        log_model: log the checkpoints as artifacts: True at the end of training (every checkpoint
            when ``save_top_k == -1``), "all" as each is saved.
        experiment: a wandb run to log to instead of starting one.
        prefix: put before every metric name, joined with "-".
        checkpoint_name: the artifact's name (default ``model-<run id>``).
        add_file_policy: "mutable" or "immutable" (how checkpoint files are added to artifacts).
        **kwargs: passed to ``wandb.init``.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        _require_wandb()
        if offline and log_model:
            raise MisconfigurationException(
                f"Providing log_model={log_model} and offline={offline} is an invalid configuration"
                " since model checkpoints cannot be uploaded in offline mode.\n"
                "Hint: Set `offline=False` to log your model."
            )
        super().__init__()
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: dict[int, Any] = {}
        self.add_file_policy = add_file_policy
        save_dir_str = os.fspath(save_dir) if save_dir is not None else None
        dir_str = os.fspath(dir) if dir is not None and save_dir is None else None
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": save_dir_str or dir_str,
            "id": version or id,
            "resume": "allow",
            "anonymous": ("allow" if anonymous else None),
        }
        self._wandb_init.update(**kwargs)
        self._project = self._wandb_init.get("project")
        self._save_dir = self._wandb_init.get("dir")
        self._name = self._wandb_init.get("name")  # type: ignore[assignment]
        self._id = self._wandb_init.get("id")
        self._checkpoint_name = checkpoint_name

    def __getstate__(self) -> dict[str, Any]:
        """A pickled logger (e.g. for spawned processes) reattaches to the same run."""
        _ = self.experiment
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = getattr(self._experiment, "id", None)
            state["_attach_id"] = getattr(self._experiment, "_attach_id", None)
            state["_name"] = self._experiment.name
        state["_experiment"] = None
        return state

    @property
    def experiment(self) -> Any:
        """The wandb run (started on first use; the run already in progress if there is one); a
        stand-in on ranks other than 0."""
        if not _is_rank_zero():
            return _DummyExperiment()
        if self._experiment is None:
            import wandb
            from wandb.sdk.lib import RunDisabled
            from wandb.wandb_run import Run

            if self._offline:
                os.environ["WANDB_MODE"] = "dryrun"
            attach_id = getattr(self, "_attach_id", None)
            if wandb.run is not None:
                import warnings

                warnings.warn(
                    "There is a wandb run already in progress and newly created instances of `WandbLogger` will reuse"
                    " this run. If this is not desired, call `wandb.finish()` before instantiating `WandbLogger`.",
                    stacklevel=2,
                )
                self._experiment = wandb.run
            elif attach_id is not None and hasattr(wandb, "_attach"):
                self._experiment = wandb._attach(attach_id)
            else:
                self._experiment = wandb.init(**self._wandb_init)
                if isinstance(self._experiment, (Run, RunDisabled)) and getattr(self._experiment, "define_metric", None):
                    if self._wandb_init.get("sync_tensorboard"):
                        self._experiment.define_metric("*", step_metric="global_step")
                    else:
                        self._experiment.define_metric("trainer/global_step")
                        self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return self._experiment

    def watch(self, model: torch.nn.Module, log: str | None = "gradients", log_freq: int = 100,
              log_graph: bool = True) -> None:
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @_rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self.experiment.config.update(params, allow_val_change=True)

    @_rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            self.experiment.log(dict(metrics, **{"trainer/global_step": step}))
        else:
            self.experiment.log(metrics)

    # -- media -----------------------------------------------------------------------------------
    @_rank_zero_only
    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        import wandb

        table: Any = wandb.Table  # wandb's annotations are narrower than the types it takes (and Lightning's)
        self.log_metrics({key: table(columns=columns, data=data, dataframe=dataframe)}, step)

    @_rank_zero_only
    def log_text(self, key: str, columns: list[str] | None = None, data: list[list[str]] | None = None,
                 dataframe: Any = None, step: int | None = None) -> None:
        self.log_table(key, columns, data, dataframe, step)

    def _log_media(self, kind: str, key: str, items: list[Any], step: int | None, **kwargs: Any) -> None:
        """`items` as wandb `kind` objects (Image, Audio, Video), one per item, with the i-th
        element of each keyword argument's list."""
        if not isinstance(items, list):
            raise TypeError(f'Expected a list as "{kind.lower()}s", found {type(items)}')
        n = len(items)
        for k, v in kwargs.items():
            if len(v) != n:
                raise ValueError(f"Expected {n} items but only found {len(v)} for {k}")
        import wandb

        cls = getattr(wandb, kind)
        media: Any = [cls(item, **{k: kwargs[k][i] for k in kwargs}) for i, item in enumerate(items)]
        self.log_metrics({key: media}, step)

    @_rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._log_media("Image", key, images, step, **kwargs)

    @_rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._log_media("Audio", key, audios, step, **kwargs)

    @_rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        self._log_media("Video", key, videos, step, **kwargs)

    # -- names -----------------------------------------------------------------------------------
    @property
    def save_dir(self) -> str | None:  # type: ignore[override]
        return self._save_dir

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The project (Lightning's)."""
        return self._project

    @property
    def version(self) -> str | None:  # type: ignore[override]
        """The run id."""
        return self._experiment.id if self._experiment else self._id

    @property
    def log_dir(self) -> str | None:  # type: ignore[override]
        return None  # Lightning's Logger default: the Trainer's log_dir is then save_dir

    # -- checkpoints -----------------------------------------------------------------------------
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or self._log_model is True and checkpoint_callback.save_top_k == -1:
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @staticmethod
    @_rank_zero_only
    def download_artifact(artifact: str, save_dir: str | os.PathLike | None = None, artifact_type: str | None = None,
                          use_artifact: bool | None = True) -> str:
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Any:
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @_rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "success":
            return  # a failed run's checkpoints are not uploaded
        if self._experiment is not None:
            for checkpoint_callback in self._checkpoint_callbacks.values():
                self._scan_and_log_checkpoints(checkpoint_callback)

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        for t, p, s, _ in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": s.item() if isinstance(s, torch.Tensor) else s,
                "original_filename": Path(p).name,
                checkpoint_callback.__class__.__name__: {
                    k: getattr(checkpoint_callback, k)
                    for k in ("monitor", "mode", "save_last", "save_top_k", "save_weights_only",
                              "_every_n_train_steps")
                    if hasattr(checkpoint_callback, k)
                },
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(p, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if p == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[p] = t
