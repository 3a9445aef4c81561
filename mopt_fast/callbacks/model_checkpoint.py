"""ModelCheckpoint: Lightning 2.6's checkpoint callback; the file it writes is core/saving.py's."""
from __future__ import annotations

__all__ = ["ModelCheckpoint"]

import copy
import datetime
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.callbacks.callback import rank_zero_info, reduce_boolean_decision, trainer_fn
from mopt_fast.callbacks.checkpoint import Checkpoint
from mopt_fast.core.saving import filesystem, is_url, remove_stale_temporaries
from mopt_fast.core.sharded_checkpoint import is_sharded_checkpoint
from mopt_fast.exceptions import MisconfigurationException, not_built

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CheckpointTrainer


class ModelCheckpoint(Checkpoint):
    """Saves checkpoints during fit, as Lightning 2.6's ModelCheckpoint (same arguments, file names,
    top-k choices, state and messages).

    Args:
        dirpath: the folder (``~`` expanded; default: ``<save_dir>/<name>/<version>/checkpoints`` of
            the first logger, or ``<default_root_dir>/checkpoints`` without a logger).
        filename: a format over ``epoch``, ``step`` and ``callback_metrics`` keys, e.g.
            ``"{epoch}-{val_loss:.2f}"`` → ``epoch=3-val_loss=0.12.ckpt`` (default ``"{epoch}-{step}"``);
            a missing key formats as 0.
        monitor: a key of ``callback_metrics`` (or "epoch" / "step") to rank checkpoints by
            (None: the newest is best).
        verbose: log each save decision (INFO, logger ``mopt_fast.trainer``).
        save_last: also keep ``last.ckpt``, the newest (``last-v1.ckpt``... when another file holds
            the name, e.g. from an earlier run); ``"link"``: a symbolic link to the newest
            checkpoint instead of a copy.
        save_top_k: keep the k best (1 by default, -1 all, 0 none but `last`).
        save_on_exception: save a checkpoint when fit raises.
        save_weights_only: checkpoints hold the model weights only (no resume state).
        mode: "min" or "max" for `monitor`.
        auto_insert_metric_name: ``{epoch}`` writes ``epoch=3`` (True) or ``3`` (False).
        every_n_train_steps: save after every n optimizer steps.
        train_time_interval: save after a batch when this much time passed since the last save.
        every_n_epochs: save at the end of every n epochs (default 1 unless another trigger is set).
        save_on_train_epoch_end: save at the end of the training epoch (True) or after validation
            (False); None decides from the Trainer's validation schedule.
        enable_version_counter: append ``-v1``, ``-v2``... to a name already taken (else overwrite).

    Attributes (as Lightning): best_model_path, best_model_score, best_k_models (path → score
    tensor), kth_best_model_path, kth_value, current_score, last_model_path.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1
    _is_model_checkpoint = True

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | str | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: datetime.timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self._last_global_step_saved = 0  # nothing is saved before the first optimizer step
        self._last_time_checked: float | None = None
        self.current_score: torch.Tensor | None = None
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self._last_checkpoint_saved = ""
        # A step- or time-triggered save whose monitored metric only validation produces waits for it.
        self._defer_save_until_validation = False
        inf = torch.tensor(torch.inf)
        modes = {"min": (inf, "min"), "max": (-inf, "max")}
        if mode not in modes:
            raise MisconfigurationException(f"`mode` can be {', '.join(modes.keys())} but got {mode}")
        self.kth_value, self.mode = modes[mode]
        if dirpath is not None:
            dirpath = os.fspath(dirpath)
            if not is_url(dirpath):  # a URL ("s3://bucket/run") is kept as given, as Lightning
                dirpath = os.path.realpath(os.path.expanduser(dirpath))
        self.dirpath: str | None = dirpath or None
        self.filename = filename
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        else:
            every_n_epochs = every_n_epochs or 0
            every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        self._every_n_epochs: int = every_n_epochs
        self._every_n_train_steps: int = every_n_train_steps
        self._validate_init_configuration()

    def _validate_init_configuration(self) -> None:
        if self.save_top_k < -1:
            raise MisconfigurationException(f"Invalid value for save_top_k={self.save_top_k}. Must be >= -1")
        if self._every_n_train_steps < 0:
            raise MisconfigurationException(
                f"Invalid value for every_n_train_steps={self._every_n_train_steps}. Must be >= 0")
        if self._every_n_epochs < 0:
            raise MisconfigurationException(f"Invalid value for every_n_epochs={self._every_n_epochs}. Must be >= 0")
        triggers = (self._every_n_train_steps >= 1) + (self._every_n_epochs >= 1) + (
            self._train_time_interval is not None)
        if triggers > 1:
            raise MisconfigurationException(
                f"Combination of parameters every_n_train_steps={self._every_n_train_steps}, "
                f"every_n_epochs={self._every_n_epochs} and train_time_interval={self._train_time_interval} "
                "should be mutually exclusive."
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={self.save_top_k}, monitor=None) is not a valid"
                " configuration. No quantity for top_k to track."
            )

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int | None:
        return self._every_n_epochs

    # -- set-up ------------------------------------------------------------------------------------
    def setup(self, trainer: CheckpointTrainer, pl_module: LightningModule, stage: str) -> None:
        self.dirpath = self._resolve_ckpt_dir(trainer)
        fs = filesystem(self.dirpath)  # the local one, or fsspec's for a URL
        remote = is_url(self.dirpath)
        # Refuse now what would make the first save fail, after training has run.
        if fs.exists(self.dirpath) and not fs.isdir(self.dirpath):
            raise NotADirectoryError(f"ModelCheckpoint(dirpath={self.dirpath!r}): that path is a file, not a folder")
        if remote and self.save_last == "link":
            raise not_built(f"ModelCheckpoint(dirpath={self.dirpath!r}, save_last='link') (a symbolic link in a "
                            "remote folder)", "use save_last=True")
        last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if (self.save_last and fs.exists(last) and not fs.isfile(last) and not os.path.islink(last)
                and not is_sharded_checkpoint(last)):  # a sharded checkpoint (strategy="fsdp") is a folder
            raise IsADirectoryError(
                f"ModelCheckpoint(save_last=True) cannot write {last!r}: it is a directory; move it away"
            )
        if trainer.is_global_zero and not remote and os.path.isdir(self.dirpath):
            remove_stale_temporaries(self.dirpath)  # remote files are written in one put, without temporaries
        if trainer.is_global_zero and stage == "fit":
            if self.save_top_k != 0 and fs.isdir(self.dirpath) and fs.ls(self.dirpath):
                warnings.warn(f"Checkpoint directory {self.dirpath} exists and is not empty.", stacklevel=2)

    def _resolve_ckpt_dir(self, trainer: CheckpointTrainer) -> str:
        """``dirpath``, else the first logger's ``<save_dir>/<name>/<version>/checkpoints``, else
        ``<default_root_dir>/checkpoints``."""
        if self.dirpath is not None:
            return self.dirpath
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = getattr(logger, "save_dir", None)
            save_dir = save_dir if save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return os.path.join(save_dir, str(logger.name), version, "checkpoints")
        return os.path.join(trainer.default_root_dir, "checkpoints")

    def on_train_start(self, trainer: CheckpointTrainer, pl_module: LightningModule) -> None:
        self._last_time_checked = time.monotonic()

    # -- when to save (the fit loop calls _on_loop_point at its checkpoint points) --------------------
    def _should_skip_saving_checkpoint(self, trainer: CheckpointTrainer) -> bool:
        return (
            bool(getattr(trainer, "fast_dev_run", False))
            or trainer_fn(trainer) != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_exception(self, trainer: CheckpointTrainer) -> bool:
        return (
            self.save_on_exception
            and not bool(getattr(trainer, "fast_dev_run", False))
            and not trainer.sanity_checking
            and self._last_global_step_saved != trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: CheckpointTrainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        num_val_batches = sum(trainer.num_val_batches) if isinstance(trainer.num_val_batches, list) else \
            trainer.num_val_batches
        if num_val_batches == 0 or not getattr(trainer, "enable_validation", True):
            return True
        return trainer.val_check_interval == 1.0

    def _on_loop_point(self, trainer: CheckpointTrainer, point: str) -> None:
        """The Trainer's checkpoint points: the end of a batch ("batch"), of a validation run
        ("validation") and of a training epoch ("epoch", after every on_train_epoch_end)."""
        if point == "batch":
            self._on_batch_end(trainer)
        elif point == "validation":
            self._on_validation_end(trainer)
        elif point == "epoch":
            self._on_epoch_end(trainer)

    def _on_batch_end(self, trainer: CheckpointTrainer) -> None:
        """Lightning's on_train_batch_end: every_n_train_steps and train_time_interval."""
        skip_batch = self._every_n_train_steps < 1 or trainer.global_step % self._every_n_train_steps != 0
        module = trainer.lightning_module
        assert module is not None  # a batch ran: the module is attached
        if not module.automatic_optimization:
            if skip_batch or self._should_skip_saving_checkpoint(trainer):
                return
            candidates = self._monitor_candidates(trainer)
            if self.monitor is not None and self.monitor not in candidates:
                self._defer_save_until_validation = True
                return
            if trainer.is_global_zero:
                warnings.warn(
                    "Using ModelCheckpoint with manual optimization and every_n_train_steps, but no "
                    "pre-optimization state was saved. The checkpoint will contain the model state "
                    "AFTER optimization.",
                    UserWarning,
                    stacklevel=2,
                )
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._last_time_checked = time.monotonic()
            return
        skip_due_to_state = self._should_skip_saving_checkpoint(trainer)
        skip_time = True
        now = time.monotonic()
        if self._train_time_interval is not None:
            prev = self._last_time_checked
            skip_time = prev is None or (now - prev) < self._train_time_interval.total_seconds()
            skip_time = _broadcast_bool(trainer, skip_time)  # rank 0's clock decides for all
        if skip_batch and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            self._defer_save_until_validation = True
            return
        # A monitored value may be stale when validation runs right after this batch: wait for it.
        if self.monitor is not None and not self._should_save_on_train_epoch_end(trainer) and trainer.is_last_batch:
            batches = trainer.num_val_batches
            num_val = sum(batches) if isinstance(batches, list) else batches
            n = trainer.check_val_every_n_epoch
            if getattr(trainer, "enable_validation", False) and num_val and num_val > 0 and (
                n is None or (trainer.current_epoch + 1) % n == 0
            ):
                self._defer_save_until_validation = True
                return
        if skip_due_to_state:
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _on_epoch_end(self, trainer: CheckpointTrainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_at_epoch_or_validation_end(trainer)

    def _on_validation_end(self, trainer: CheckpointTrainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            if self._defer_save_until_validation:
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
                self._defer_save_until_validation = False
                return
            self._save_at_epoch_or_validation_end(trainer)

    def _save_at_epoch_or_validation_end(self, trainer: CheckpointTrainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_topk_checkpoint(trainer, candidates)
        # `last` only when a checkpoint was saved at this step (or to re-point a link)
        if self._last_global_step_saved == trainer.global_step or (
            self.save_last == "link" and self._last_checkpoint_saved
        ):
            self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer: CheckpointTrainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not self._should_save_on_exception(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(metrics=candidates)
        self._save_checkpoint(trainer, filepath)
        self._save_last_checkpoint(trainer, candidates)
        rank_zero_info(trainer, f"An {type(exception).__name__} was raised with message: {exception}, saved "
                                f"checkpoint to {filepath}")

    def on_train_end(self, trainer: CheckpointTrainer, pl_module: LightningModule) -> None:
        if self.save_last and not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            # mopt_fast's: a resumed fit does not save again at the step it resumes from
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if self.dirpath == dirpath_from_ckpt:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = state_dict.get("best_k_models", self.best_k_models)
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            warnings.warn(
                f"The dirpath has changed from {dirpath_from_ckpt!r} to {self.dirpath!r},"
                " therefore `best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and"
                " `best_k_models` won't be reloaded. Only `best_model_path` will be reloaded.",
                stacklevel=2,
            )
        self.best_model_path = state_dict["best_model_path"]
        self._last_global_step_saved = state_dict.get("last_global_step_saved", 0)

    # -- saving ------------------------------------------------------------------------------------
    def _save_topk_checkpoint(self, trainer: CheckpointTrainer, candidates: dict[str, torch.Tensor]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is not None:
            if self.monitor not in candidates:
                m = (
                    f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned"
                    f" metrics: {list(candidates)}."
                    f" HINT: Did you call `log({self.monitor!r}, value)` in the `LightningModule`?"
                )
                if trainer.fit_loop.validation_has_run:
                    raise MisconfigurationException(m)
                if m not in _warned:
                    _warned.add(m)
                    warnings.warn(m, stacklevel=2)
            self._save_monitor_checkpoint(trainer, candidates)
        else:
            self._save_none_monitor_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: CheckpointTrainer, filepath: str) -> None:
        # Before the write: the file carries this bookkeeping in its own state.
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        trainer.save_checkpoint(filepath, self.save_weights_only)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                after = getattr(logger, "after_save_checkpoint", None)
                if after is not None:
                    after(self)

    @staticmethod
    def _link_checkpoint(trainer: CheckpointTrainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.islink(linkpath) or os.path.isfile(linkpath):
                os.remove(linkpath)
            elif os.path.isdir(linkpath):
                shutil.rmtree(linkpath)
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
            except OSError:  # no permission to make links (Windows): a copy
                shutil.copy(filepath, linkpath)
        trainer.strategy.barrier()

    def _save_last_checkpoint(self, trainer: CheckpointTrainer, candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last:
            return
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        previous, self.last_model_path = self.last_model_path, filepath
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            self._link_checkpoint(trainer, self._last_checkpoint_saved, filepath)
        else:
            self._save_checkpoint(trainer, filepath)
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_monitor_checkpoint(self, trainer: CheckpointTrainer, candidates: dict[str, torch.Tensor]) -> None:
        assert self.monitor is not None  # called for a monitored checkpoint only
        current = candidates.get(self.monitor)
        if self.check_monitor_top_k(trainer, current):
            assert current is not None  # check_monitor_top_k is False without a value
            self._update_best_and_save(current, trainer, candidates)
        elif self.verbose:
            epoch, step = candidates["epoch"], candidates["step"]
            rank_zero_info(trainer, f"Epoch {epoch:d}, global step {step:d}: {self.monitor!r} was not in top "
                                    f"{self.save_top_k}")

    def _save_none_monitor_checkpoint(self, trainer: CheckpointTrainer, candidates: dict[str, torch.Tensor]) -> None:
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, self.best_model_path)
        previous, self.best_model_path = self.best_model_path, filepath
        self._save_checkpoint(trainer, filepath)
        if self.save_top_k == 1 and previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def check_monitor_top_k(self, trainer: CheckpointTrainer, current: torch.Tensor | None = None) -> bool:
        if current is None:
            return False
        if self.save_top_k == -1:
            return True
        if len(self.best_k_models) < self.save_top_k:
            return True
        monitor_op = {"min": torch.lt, "max": torch.gt}[self.mode]
        better = bool(monitor_op(current, self.best_k_models[self.kth_best_model_path]))
        return reduce_boolean_decision(trainer, better)  # every rank decides the same

    def _update_best_and_save(self, current: torch.Tensor, trainer: CheckpointTrainer,
                              candidates: dict[str, torch.Tensor]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        del_filepath = None
        if len(self.best_k_models) == k and k > 0:
            del_filepath = self.kth_best_model_path
            self.best_k_models.pop(del_filepath)
        if isinstance(current, torch.Tensor) and torch.isnan(current):  # a NaN is the worst score
            current = torch.tensor(float("inf" if self.mode == "min" else "-inf"), device=current.device)
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, del_filepath)
        self.current_score = current
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.__getitem__)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            epoch, step = candidates["epoch"], candidates["step"]
            rank_zero_info(
                trainer,
                f"Epoch {epoch:d}, global step {step:d}: {self.monitor!r} reached {current:0.5f}"
                f" (best {self.best_model_score:0.5f}), saving model to {filepath!r} as top {k}",
            )
        self._save_checkpoint(trainer, filepath)
        if del_filepath and self._should_remove_checkpoint(trainer, del_filepath, filepath):
            self._remove_checkpoint(trainer, del_filepath)

    # -- names -------------------------------------------------------------------------------------
    def _format_checkpoint_name(self, filename: str | None, metrics: dict[str, Any], prefix: str | None = None,
                                auto_insert_metric_name: bool = True) -> str:
        if not filename:
            filename = "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"
        groups = re.findall(r"(\{.*?)[:\}]", filename)
        # longest first, so "epoch_test" is replaced before "epoch"
        for group in sorted(groups, key=len, reverse=True):
            name = group[1:]
            if auto_insert_metric_name:
                filename = filename.replace(group, name + self.CHECKPOINT_EQUALS_CHAR + "{" + name)
            filename = filename.replace(group, f"{{0[{name}]")  # names with dots
            if name not in metrics:
                metrics[name] = torch.tensor(0)
        filename = filename.format(metrics)
        if prefix is not None:
            filename = self.CHECKPOINT_JOIN_CHAR.join([prefix, filename])
        return filename

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None,
                               prefix: str | None = None) -> str:
        """The path a checkpoint with these metrics gets, e.g. ``{epoch}-{val_loss:.2f}`` with
        epoch 2 and val_loss 0.123 → ``<dirpath>/epoch=2-val_loss=0.12.ckpt``; `ver` appends ``-v<ver>``."""
        filename = self._format_checkpoint_name(filename or self.filename, metrics, prefix=prefix,
                                                auto_insert_metric_name=self.auto_insert_metric_name)
        if ver is not None:
            filename = self.CHECKPOINT_JOIN_CHAR.join((filename, f"v{ver}"))
        name = f"{filename}{self.FILE_EXTENSION}"
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _get_metric_interpolated_filepath_name(self, candidates: dict[str, torch.Tensor], trainer: CheckpointTrainer,
                                               del_filepath: str | None = None) -> str:
        filepath = self.format_checkpoint_name(candidates)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != del_filepath:
                filepath = self.format_checkpoint_name(candidates, ver=version)
                version += 1
        return filepath

    def _monitor_candidates(self, trainer: CheckpointTrainer) -> dict[str, torch.Tensor]:
        candidates = copy.deepcopy(trainer.callback_metrics)
        # self.log("epoch", ...) logs a float: back to an int; anything else there is replaced
        epoch = candidates.get("epoch")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        step = candidates.get("step")
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def _find_last_checkpoints(self, trainer: CheckpointTrainer) -> set[str]:
        """The files of this callback's folder named like its `last` checkpoints (what
        ``fit(ckpt_path="last")`` chooses from, the newest)."""
        folder = self._resolve_ckpt_dir(trainer)
        pattern = rf"^{self.CHECKPOINT_NAME_LAST}(-(\d+))?"
        fs = filesystem(folder)
        if not fs.isdir(folder):
            return set()
        names = [os.path.basename(str(entry).rstrip("/")) for entry in fs.ls(folder, detail=False)]
        join = (lambda name: f"{folder.rstrip('/')}/{name}") if is_url(folder) else (
            lambda name: os.path.normpath(os.path.join(folder, name)))
        return {
            join(f) for f in names
            if f.endswith(self.FILE_EXTENSION) and re.match(pattern, f[: -len(self.FILE_EXTENSION)])
        }

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """Writes `best_k_models` (path: score) to a YAML file (default ``<dirpath>/best_k_models.yaml``)."""
        try:
            import yaml
        except ImportError as e:
            raise ImportError("ModelCheckpoint.to_yaml needs PyYAML: pip install pyyaml") from e
        best_k = {k: v.item() for k, v in self.best_k_models.items()}
        if filepath is None:
            assert self.dirpath is not None, "ModelCheckpoint.to_yaml: dirpath is set at setup"
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with filesystem(filepath).open(os.fspath(filepath), "w") as fp:
            yaml.dump(best_k, fp)

    def file_exists(self, filepath: str | os.PathLike, trainer: CheckpointTrainer) -> bool:
        """Whether `filepath` exists on rank 0 (every rank gets rank 0's answer)."""
        exists = trainer.is_global_zero and filesystem(filepath).exists(os.fspath(filepath))
        return reduce_boolean_decision(trainer, exists, all=False)

    def _should_remove_checkpoint(self, trainer: CheckpointTrainer, previous: str, current: str) -> bool:
        """Not the file just written, not the file this fit resumed from, and inside dirpath."""
        if previous == current:
            return False
        assert self.dirpath is not None  # set at setup, before any save
        resume = getattr(trainer, "ckpt_path", None)
        if is_url(self.dirpath):  # URLs: compared as written
            return previous != resume and previous.startswith(self.dirpath.rstrip("/") + "/")
        previous_path = Path(previous).absolute()
        if resume is not None and previous_path == Path(resume).absolute():
            return False
        return Path(self.dirpath).absolute() in previous_path.parents

    def _remove_checkpoint(self, trainer: CheckpointTrainer, filepath: str) -> None:
        if trainer.is_global_zero and (filesystem(filepath).exists(filepath) or os.path.islink(filepath)):
            trainer.strategy.remove_checkpoint(filepath)  # through the checkpoint IO plugin, as Lightning


_warned: set[str] = set()


def _broadcast_bool(trainer: CheckpointTrainer, value: bool) -> bool:
    """Rank 0's `value` on every rank."""
    if trainer.world_size <= 1:
        return value
    t = torch.tensor(float(value) if trainer.is_global_zero else 0.0, device=trainer.root_device)
    return bool(trainer.strategy.reduce(t, reduce_op="sum").item() > 0)
