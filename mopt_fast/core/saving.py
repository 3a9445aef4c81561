"""What mopt_fast writes to disk and reads back (Lightning's ``core/saving.py``): the checkpoint
file format, hyperparameter files (hparams.yaml, tags.csv), and `AttributeDict`.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: opening one cannot run code. It holds the model, every
optimizer and scheduler, the loss scaler, each loop's own state (see the loops' ``state_dict``),
the logged-metric state and every RNG state.

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

import ast
import copy
import csv
import hashlib
import os
import re
import socket
import struct
import tempfile
import warnings
from argparse import Namespace
from collections.abc import Mapping
from enum import Enum
from typing import IO, Any

import torch

__all__ = ["FORMAT", "AttributeDict", "checksum", "filesystem", "load_checkpoint", "load_hparams_from_tags_csv",
           "load_hparams_from_yaml", "remove_stale_temporaries", "save_atomic", "save_checkpoint_file",
           "save_hparams_to_yaml"]


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
    removed: list[str] = []
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



class AttributeDict(dict):
    """A dict whose keys are also attributes (``hparams.lr``), as Lightning's AttributeDict."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from e

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val

    def __delattr__(self, item: str) -> None:
        if item not in self:
            raise KeyError(item)
        del self[item]

    def __repr__(self) -> str:
        if not len(self):
            return ""
        max_key_length = max(len(str(k)) for k in self)
        tmp_name = "{:" + str(max_key_length + 3) + "s} {}"
        rows = [tmp_name.format(f'"{n}":', self[n]) for n in sorted(self.keys())]
        return "\n".join(rows)


def _default_map_location(storage: Any, location: str) -> Any:
    """torch.load's default, except that tensors saved on a device this machine lacks go to the CPU."""
    if (
        location.startswith("mps") and not torch.backends.mps.is_available()
        or location.startswith("cuda") and not torch.cuda.is_available()
        or location.startswith("xla")
    ):
        return storage.cpu()
    return None


def _read_checkpoint(checkpoint_path: str | os.PathLike | IO, map_location: Any, weights_only: bool | None,
                     hparams_file: str | os.PathLike | None = None, key: str = "hyper_parameters") -> dict:
    """A checkpoint written by mopt_fast.Trainer (or by Lightning's Trainer: the same keys), loaded
    with ``weights_only=True`` unless told otherwise."""
    if isinstance(checkpoint_path, (str, os.PathLike)):
        checkpoint_path = os.fspath(checkpoint_path)
    ckpt = torch.load(checkpoint_path, map_location=map_location or _default_map_location,
                      weights_only=True if weights_only is None else weights_only)
    if not isinstance(ckpt, dict) or ("state_dict" not in ckpt and key == "hyper_parameters"):
        raise ValueError(f"{checkpoint_path!r} is not a checkpoint of a LightningModule: it has no 'state_dict'")
    if hparams_file is not None:  # hyperparameters from a file, instead of the checkpoint's
        extension = str(hparams_file).split(".")[-1].lower()
        if extension not in ("csv", "yml", "yaml"):
            raise ValueError(".csv, .yml or .yaml is required for `hparams_file`")
        read = load_hparams_from_tags_csv if extension == "csv" else load_hparams_from_yaml
        ckpt[key] = read(os.fspath(hparams_file))
    return ckpt



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
        # typeshed's Mapping declares no constructor; the mappings rebuilt here (dict, OrderedDict, ...) take one
        items = {k: _dictconfigs_to_containers(v, omegaconf) for k, v in obj.items()}
        return type(obj)(items)  # type: ignore[call-arg]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_dictconfigs_to_containers(v, omegaconf) for v in obj)
    return obj


def save_hparams_to_yaml(config_yaml: str, hparams: dict | Namespace, use_omegaconf: bool = True) -> None:
    """Write `hparams` to the YAML file `config_yaml` as Lightning does: through OmegaConf when it is
    installed, else with ``yaml.dump``, values YAML cannot dump skipped with a warning."""
    fs = filesystem(config_yaml)
    if not fs.isdir(os.path.dirname(config_yaml)):
        raise RuntimeError(f"Missing folder: {os.path.dirname(config_yaml)}.")
    if isinstance(hparams, Namespace):
        hparams = vars(hparams)
    else:
        if isinstance(hparams, AttributeDict):
            hparams = dict(hparams)
    yaml = _yaml()
    omegaconf = _omegaconf() if use_omegaconf else None
    if omegaconf is not None:
        hparams = _dictconfigs_to_containers(copy.deepcopy(hparams), omegaconf)
        with fs.open(config_yaml, "w", encoding="utf-8") as fp:
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
    with fs.open(config_yaml, "w", newline="") as fp:
        yaml.dump(allowed, fp)


class _LocalFileSystem:
    """The few fsspec file-system calls the loggers make, on local paths (no fsspec needed)."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def ls(self, path: str, detail: bool = False) -> list[str]:
        return [os.path.join(path, name) for name in os.listdir(path)]

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def open(self, path: str, mode: str = "r", **kwargs: Any) -> IO:
        return open(path, mode, **kwargs)

    def rm_file(self, path: str) -> None:
        os.remove(path)


def filesystem(path: str | os.PathLike) -> Any:
    """Where `path` lives: fsspec's file system for a URL (``memory://``, ``s3://``...; fsspec is
    imported then only, as Lightning's loggers write remote paths through it), else the local one."""
    path = os.fspath(path)
    if "://" not in path:
        return _LocalFileSystem()
    try:
        import fsspec
    except ImportError as exc:
        raise ModuleNotFoundError(f"The path {path!r} is a URL: writing to it needs fsspec (pip install fsspec)") from exc
    return fsspec.core.url_to_fs(path)[0]


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

