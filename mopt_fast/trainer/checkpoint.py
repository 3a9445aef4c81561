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

import os
import pickle
import random
import re
import tempfile
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
        self._last_global_step_saved = -1

    # -- the Trainer calls these at the end of a batch and of an epoch --------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.dirpath is None:
            root = trainer.log_dir if trainer.loggers else trainer.default_root_dir
            self.dirpath = os.path.join(root, "checkpoints")

    def _on_loop_point(self, trainer: Any, point: str) -> None:
        if trainer.sanity_checking:
            return
        if point == "batch":
            n = self.every_n_train_steps
            if not n or trainer.global_step % n != 0 or trainer.global_step == self._last_global_step_saved:
                return
        elif point == "epoch":
            n = self.every_n_epochs
            if not n or (trainer.current_epoch + 1) % n != 0:
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
        """Rank zero writes (every rank holds the same DDP state); the others wait for it."""
        if trainer.is_global_zero:
            self._save(trainer)
        trainer.strategy.barrier()

    def _save(self, trainer: Any) -> None:
        metrics = dict(trainer.callback_metrics)
        score = None
        if self.monitor is not None:
            if self.monitor not in metrics:
                raise KeyError(
                    f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the returned "
                    f"metrics: {list(metrics)}. HINT: Did you call `self.log({self.monitor!r}, value)`?"
                )
            score = float(metrics[self.monitor])
        self._last_global_step_saved = trainer.global_step
        ckpt = None
        if self.save_top_k != 0:
            path = os.path.join(self.dirpath, self._format(trainer, metrics) + self.FILE_EXTENSION)
            if self._keeps(score):
                ckpt = trainer._checkpoint_dict()
                self._add_callback_state(ckpt)
                save_atomic(ckpt, path)
                self._update_best(path, score, trainer)
        if self.save_last:
            if ckpt is None:
                ckpt = trainer._checkpoint_dict()
                self._add_callback_state(ckpt)
            last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            save_atomic(ckpt, last)
            self.last_model_path = last

    def _higher_is_better(self) -> bool:
        return self.monitor is None or self.mode == "max"  # without a monitor the newest step is best

    def _keeps(self, score: float | None) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k or score is None:
            return True
        if self._higher_is_better():
            return score > min(self.best_k_models.values())
        return score < max(self.best_k_models.values())

    def _update_best(self, path: str, score: float | None, trainer: Any) -> None:
        self.best_k_models[path] = score if score is not None else float(trainer.global_step)
        by_value = self.best_k_models.__getitem__
        better, worse = (max, min) if self._higher_is_better() else (min, max)
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            drop = worse(self.best_k_models, key=by_value)
            del self.best_k_models[drop]
            if drop != path and os.path.exists(drop):
                os.unlink(drop)
        self.best_model_path = better(self.best_k_models, key=by_value)
        self.best_model_score = self.best_k_models[self.best_model_path] if score is not None else None

    def _add_callback_state(self, ckpt: dict[str, Any]) -> None:
        ckpt.setdefault("callbacks", {})["ModelCheckpoint"] = self.state_dict()

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
        self._last_global_step_saved = state.get("last_global_step_saved", -1)
