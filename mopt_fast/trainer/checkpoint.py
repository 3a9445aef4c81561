"""Checkpoints: atomic writes, safe loads, and the ModelCheckpoint callback.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: opening one cannot run code. It holds the model, every
optimizer and scheduler, the loss scaler, the loop position (epoch, global step, batch within the
epoch, and where in the batch it was taken), the logged-metric state and every RNG state, plus
the RNG state at the start of the epoch so a resumed run can rebuild the epoch's shuffled order.

Every checkpoint carries a SHA-256 checksum of its contents (the ``"checksum"`` entry, over every
other entry: tensors by dtype, shape and bytes, plain data by type and value), checked on load: a
file damaged on disk or in transfer is refused, not loaded with other values. The checksum is an
entry of the same dictionary, so ``torch.load(path, weights_only=True)`` still gives the
checkpoint itself, and loading costs no second copy of the payload.

Writes go to a temporary file in the target folder, are fsync'ed, then renamed over the target:
a crash during a save leaves the previous file intact, never a torn one. The temporary file's
name carries the writer's process id and host, so a later save into the folder can remove those
left by a writer that was killed (and only those).
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import re
import socket
import struct
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mopt_fast.trainer.callbacks import Callback

__all__ = ["ModelCheckpoint", "save_atomic", "save_checkpoint_file", "load_checkpoint", "remove_stale_temporaries",
           "rng_state", "set_rng_state", "FORMAT"]

FORMAT = "mopt_fast.checkpoint/2"
# Files written before checksums (mopt_fast.checkpoint/1) still load, unverified, with a warning.
# (No single bit flip turns "/2" into "/1": '1' and '2' differ in two bits.)
_FORMAT_V1 = "mopt_fast.checkpoint/1"
_CHECKSUM_KEY = "checksum"
_CHECKSUM_ALGORITHM = "sha256"


def _fsync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


# Temporary files: ".tmp-<pid>-<host>~<random>.ckpt" (a host name has no "~").
_TMP_NAME = re.compile(r"^\.tmp-(\d+)-([^~/]*)~[^/]*\.ckpt$")
_writing: set[str] = set()  # temporary files this process is writing now
_swept: set[str] = set()  # folders already cleared of stale temporaries by this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace("~", "_")


def remove_stale_temporaries(folder: str) -> list[str]:
    """Removes the temporary files that a save killed midway left in `folder`: our own name
    pattern, written on this host by a process that no longer runs (or by this process, under a
    pid it reuses, when it is not writing that file now). Files from other hosts, or from any
    process still running, are left alone: they may be being written. Returns the removed paths."""
    removed = []
    host = _host()
    folder = os.path.abspath(folder)  # as save_atomic names the files in _writing
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP_NAME.match(name)
        if m is None or m.group(2) != host:
            continue
        path = os.path.join(folder, name)
        pid = int(m.group(1))
        if (path in _writing) if pid == os.getpid() else _pid_alive(pid):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:  # gone already, or not ours to remove: leave it
            pass
    return removed


def save_atomic(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` so that `path` is either the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if folder not in _swept:  # once per folder: stale files come from processes that died before
        remove_stale_temporaries(folder)
        _swept.add(folder)
    prefix = f".tmp-{os.getpid()}-{_host()}~"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".ckpt", dir=folder)
    _writing.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            _fsync(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _writing.discard(tmp)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def _feed(h: Any, obj: Any, where: str) -> None:
    """Feeds `obj` to the hash `h`, unambiguously: a type tag, then lengths and values. Covers
    what a weights_only load can give back; `where` names the entry for an error."""
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        text = str(int(obj)).encode()
        h.update(b"i%d:" % len(text) + text)
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    elif isinstance(obj, complex):
        h.update(b"c" + struct.pack("<dd", obj.real, obj.imag))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(data) + data)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"b%d:" % len(obj) + bytes(obj))
    elif isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj, where)
    elif isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        text = f"{type(obj).__name__}:{obj}".encode()
        h.update(b"o%d:" % len(text) + text)
    elif isinstance(obj, Mapping):
        h.update(b"d%d:" % len(obj))
        for key, value in obj.items():  # in order: pickling keeps a dict's order
            _feed(h, key, where)
            _feed(h, value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update((b"z" if isinstance(obj, torch.Size) else b"t" if isinstance(obj, tuple) else b"l") + b"%d:" % len(obj))
        for i, value in enumerate(obj):
            _feed(h, value, f"{where}[{i}]")
    elif isinstance(obj, (set, frozenset)):  # no order to keep: the sorted digests of the items
        digests = []
        for value in obj:
            item = hashlib.sha256()
            _feed(item, value, f"{where}{{...}}")
            digests.append(item.digest())
        h.update(b"e%d:" % len(digests) + b"".join(sorted(digests)))
    else:
        raise TypeError(
            f"checkpoint entry {where} is a {type(obj).__qualname__}: a checkpoint holds tensors and plain data "
            "(numbers, strings, lists, tuples, dicts), what torch.load(weights_only=True) can read back"
        )


def _feed_tensor(h: Any, t: torch.Tensor, where: str) -> None:
    if t.layout != torch.strided or t.is_quantized or t.is_nested:
        raise TypeError(f"checkpoint entry {where} is a {t.layout} tensor: only dense (strided) tensors are supported")
    meta = f"{t.dtype}|{tuple(t.shape)}|{t.requires_grad}".encode()
    h.update(b"x%d:" % len(meta) + meta)
    if t.device.type == "meta":  # no data to cover
        return
    data = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    h.update(data.reshape(-1).view(torch.uint8).numpy())


def checksum(ckpt: Mapping[str, Any]) -> str:
    """The checksum of a checkpoint's contents: every entry but the checksum itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != _CHECKSUM_KEY}, "checkpoint")
    return f"{_CHECKSUM_ALGORITHM}:{h.hexdigest()}"


def save_checkpoint_file(ckpt: dict[str, Any], *paths: str) -> None:
    """Writes the checkpoint dictionary `ckpt` (with its format marker) to each of `paths`,
    atomically, with the checksum of its contents added. A value a weights_only load could not
    read back is a TypeError here, before anything is written."""
    sealed = {k: v for k, v in ckpt.items() if k != _CHECKSUM_KEY}
    sealed[_CHECKSUM_KEY] = checksum(sealed)
    for path in paths:
        save_atomic(sealed, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Loads a checkpoint written by `Trainer.save_checkpoint` or `ModelCheckpoint`, with
    ``weights_only=True``, and checks its checksum. A truncated, corrupt, foreign or code-carrying
    file raises ValueError naming the file; the returned dictionary has no checksum entry."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can fail anywhere in the unpickler or the zip reader
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path!r} is not a loadable mopt_fast checkpoint (truncated, corrupt, or holding objects other "
            f"than tensors and plain data): {type(e).__name__}: {reason}"
        ) from e
    marker = ckpt.get("format") if isinstance(ckpt, dict) else None
    marker = marker if isinstance(marker, str) else None
    if marker == _FORMAT_V1:
        warnings.warn(f"{path!r} was written by an older mopt_fast, without a checksum: it is loaded unverified",
                      stacklevel=2)
        return ckpt
    if marker != FORMAT:
        raise ValueError(f"{path!r} is not a mopt_fast checkpoint (no {FORMAT!r} format marker)")
    stored = ckpt.pop(_CHECKSUM_KEY, None)
    try:
        actual = checksum(ckpt)
    except Exception as e:  # a damaged file may hold what no checkpoint holds
        raise ValueError(f"{path!r} is corrupt: its contents cannot be checked ({e})") from e
    if not isinstance(stored, str) or stored != actual:
        raise ValueError(
            f"{path!r} is corrupt: its contents do not match the checksum stored in it "
            f"(stored {stored!r}, computed {actual!r}); the file was damaged after it was written"
        )
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
        # Refuse now what would make the first save fail, after training has run.
        if os.path.exists(self.dirpath) and not os.path.isdir(self.dirpath):
            raise NotADirectoryError(f"ModelCheckpoint(dirpath={self.dirpath!r}): that path is a file, not a folder")
        last = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if self.save_last and os.path.exists(last) and not os.path.isfile(last):
            raise IsADirectoryError(
                f"ModelCheckpoint(save_last=True) cannot write {last!r}: it is a directory; move it away"
            )
        if trainer.is_global_zero and os.path.isdir(self.dirpath):
            remove_stale_temporaries(self.dirpath)

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
            save_checkpoint_file(ckpt, *(p for p in (path, last) if p is not None))
            if path is not None and drop is not None and drop != path and os.path.exists(drop):
                os.unlink(drop)
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
