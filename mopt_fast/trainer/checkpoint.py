"""Checkpoints: atomic writes, safe loads, and the ModelCheckpoint callback.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: opening one cannot run code. It holds the model, every
optimizer and scheduler, the loss scaler, the loop position (epoch, global step, batch within the
epoch, and where in the batch it was taken), the logged-metric state and every RNG state, plus
the RNG state at the start of the epoch so a resumed run can rebuild the epoch's shuffled order.

Writes go to a temporary file in the target folder, are fsync'ed, then renamed over the target:
a crash during a save leaves the previous file intact, never a torn one.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from typing import Any

import torch

from mopt_fast.trainer.callbacks import Callback

__all__ = ["ModelCheckpoint", "save_atomic", "load_checkpoint", "rng_state", "set_rng_state", "FORMAT"]

FORMAT = "mopt_fast.checkpoint/1"


def _fsync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def save_atomic(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` so that `path` is either the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            _fsync(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Loads a checkpoint written by `Trainer.save_checkpoint`, with ``weights_only=True``.
    A truncated, foreign or code-carrying file raises ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(
            f"{path!r} is not a loadable mopt_fast checkpoint (truncated, corrupt, or holding objects other "
            f"than tensors and plain data): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a mopt_fast checkpoint (no {FORMAT!r} format marker)")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as plain data (numpy's as lists, so weights_only loads it)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [name, keys.tolist(), pos, has_gauss, cached]
    except ImportError:  # numpy is optional
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))


class ModelCheckpoint(Callback):
    """Saves checkpoints during fit, as Lightning's ModelCheckpoint.

    Args:
        dirpath: the folder (default: ``<log_dir>/checkpoints``, or ``<default_root_dir>/checkpoints``
            without a logger).
        filename: a format over ``epoch``, ``step`` and logged metrics, e.g. ``"{epoch}-{val_loss:.2f}"``
            → ``epoch=3-val_loss=0.12.ckpt`` (default ``"{epoch}-{step}"``).
        monitor: a key of ``callback_metrics`` to rank checkpoints by (None: the newest is best).
        mode: "min" or "max" for `monitor`.
        save_top_k: keep the k best (1 by default, -1 all, 0 none but `last`).
        save_last: also keep ``last.ckpt``, always the newest (what ``fit(ckpt_path="last")`` loads).
        every_n_train_steps: save after every n optimizer steps (at the end of a batch).
        every_n_epochs: save at the end of every n epochs (default 1 unless every_n_train_steps is set).
    """

    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | None = None,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` can be 'min' or 'max', got {mode!r}")
        if save_top_k < -1:
            raise ValueError(f"Invalid value for save_top_k={save_top_k}. Must be >= -1")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: without a "
                "monitor there is no ranking; use save_top_k 1 (the newest), -1 (all) or 0"
            )
        for name, n in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if n is not None and (not isinstance(n, int) or n < 0):
                raise ValueError(f"`{name}` must be a non-negative int or None, got {n!r}")
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else (0 if every_n_train_steps else 1)
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._last_global_step_saved = 0  # nothing is saved before the first optimizer step

    # -- the Trainer calls these at the end of a batch and of an epoch --------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            root = trainer.log_dir if trainer.loggers else trainer.default_root_dir
            self.dirpath = os.path.join(root, "checkpoints")

    def _save_on_train_epoch_end(self, trainer: Any) -> bool:
        """Lightning's rule: with validation every epoch at the epoch's end, save at the end of
        the training epoch; when validation runs at other times, save after each validation."""
        if not trainer.enable_validation:
            return True
        return trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0

    def _on_loop_point(self, trainer: Any, point: str) -> None:
        """Called by the Trainer at the end of a batch, after a validation run, and at the end
        of an epoch (after the module's on_train_epoch_end): the points a fit resumes from."""
        if trainer.sanity_checking or trainer.global_step == self._last_global_step_saved:
            return
        if point == "batch":
            n = self.every_n_train_steps
            if not n or trainer.global_step % n != 0:
                return
        elif point in ("epoch", "validation"):
            n = self.every_n_epochs
            if not n or (trainer.current_epoch + 1) % n != 0:
                return
            if (point == "epoch") != self._save_on_train_epoch_end(trainer):
                return
        else:
            return
        self.save(trainer)

    def _format(self, trainer: Any, metrics: dict[str, Any]) -> str:
        template = self.filename or "{epoch}-{step}"
        values = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        values.update({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()})

        def fill(m: re.Match) -> str:
            key, spec = m.group(1), m.group(2) or ""
            if key not in values:
                return f"{key}=missing"
            return f"{key}={format(values[key], spec[1:]) if spec else values[key]}"

        return re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", fill, template)

    def save(self, trainer: Any) -> None:
        """Every rank decides the same way and keeps the same bookkeeping; rank zero alone writes
        (DDP ranks hold the same state), and the others wait for it."""
        metrics = dict(trainer.callback_metrics)
        self._last_global_step_saved = trainer.global_step
        path, score, drop = None, None, None
        if self.save_top_k != 0:
            topk = True
            if self.monitor is not None:
                if self.monitor not in metrics:
                    message = (f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the "
                               f"returned metrics: {list(metrics)}. HINT: Did you call `self.log({self.monitor!r}, "
                               "value)`?")
                    if trainer._validation_has_run:
                        raise KeyError(message)
                    warnings.warn(message + " (skipping this save: no validation has run yet)", stacklevel=3)
                    topk = False
                else:
                    score = float(metrics[self.monitor])
                    if math.isnan(score):  # a NaN is the worst score, never the best
                        score = math.inf if self.mode == "min" else -math.inf
            if topk and self._keeps(score):
                stem = os.path.join(self.dirpath, self._format(trainer, metrics))
                # Without a monitor the newest file may take its predecessor's name (as Lightning).
                replaced = self._pushed_out(score) if score is not None else (self.best_model_path or None)
                path = self._unused_path(stem, replaced)
                drop = self._record(path, score)
        last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION) if self.save_last else None
        if last is not None:
            self.last_model_path = last
        if path is None and last is None:
            return
        ckpt = trainer._checkpoint_dict()  # after the bookkeeping: the file carries its own entry
        if trainer.is_global_zero:
            if path is not None:
                save_atomic(ckpt, path)
                if drop is not None and drop != path and os.path.exists(drop):
                    os.unlink(drop)
            if last is not None:
                save_atomic(ckpt, last)
        trainer.strategy.barrier()

    def _pushed_out(self, score: float) -> str | None:
        """The kept file a new checkpoint with a monitored `score` will replace, if any."""
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return None
        worse = min if self.mode == "max" else max
        return worse(self.best_k_models, key=self.best_k_models.__getitem__)

    def _unused_path(self, stem: str, replaced: str | None) -> str:
        """``stem.ckpt``, or ``stem-v1.ckpt``, ... when that name is taken by another file than
        the one this checkpoint replaces (as Lightning names them)."""
        path, version = stem + self.FILE_EXTENSION, 1
        while os.path.exists(path) and path != replaced:
            path = f"{stem}-v{version}{self.FILE_EXTENSION}"
            version += 1
        return path

    def _keeps(self, score: float | None) -> bool:
        if score is None or self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        if self.mode == "max":
            return score > min(self.best_k_models.values())
        return score < max(self.best_k_models.values())

    def _record(self, path: str, score: float | None) -> str | None:
        """Updates the best-k bookkeeping for a new file; returns the file it pushes out."""
        if score is None:  # no monitor: the newest is the best; keep one (or all, save_top_k=-1)
            drop = self.best_model_path if self.save_top_k == 1 and self.best_model_path else None
            self.best_model_path = path
            return drop
        self.best_k_models[path] = score
        better, worse = (max, min) if self.mode == "max" else (min, max)
        drop = None
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            drop = worse(self.best_k_models, key=self.best_k_models.__getitem__)
            del self.best_k_models[drop]
        self.best_model_path = better(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = self.best_k_models[self.best_model_path]
        return drop

    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": self.dirpath, "monitor": self.monitor, "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score, "best_k_models": dict(self.best_k_models),
            "last_model_path": self.last_model_path, "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dirpath") == self.dirpath and state.get("monitor") == self.monitor:
            self.best_model_path = state["best_model_path"]
            self.best_model_score = state["best_model_score"]
            self.best_k_models = dict(state["best_k_models"])
            self.last_model_path = state["last_model_path"]
        self._last_global_step_saved = state.get("last_global_step_saved", 0)
