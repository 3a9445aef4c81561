"""What mopt_fast writes to disk and reads back (Lightning's ``core/saving.py``): the checkpoint
file format, hyperparameter files (hparams.yaml, tags.csv), and `AttributeDict`.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: opening one cannot run code. Its layout is Lightning 2.6's, so
that either Trainer reads the other's files (see trainer/_lightning_ckpt.py): ``epoch``,
``global_step``, ``pytorch-lightning_version``, ``state_dict``, ``loops`` (Lightning's progress
counters), ``optimizer_states``, ``lr_schedulers``, ``callbacks`` (by state key), the loss scaler
under the precision plugin's class name, the hyperparameters; and, under ``"mopt_fast"`` (which
Lightning ignores), what an exact resume needs beyond that: each loop's own state (see the loops'
``state_dict``), the logged-metric state and every RNG state.

The one exception to plain data is a hyperparameter that is not (an ``nn.Module`` passed to
``__init__``): as Lightning, the checkpoint pickles it (see `HyperparametersMixin._checkpoint_hparams`),
and such a file then loads only with ``weights_only=False``, in either Trainer.

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
import pickle
import re
import socket
import struct
import tempfile
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping
from enum import Enum
from typing import IO, Any

import torch

__all__ = ["FORMAT", "LIGHTNING_LAYOUT_VERSION", "LIGHTNING_VERSION_KEY", "AttributeDict", "PickledCheckpointError",
           "checkpoint_source", "checksum", "filesystem", "is_url", "load_checkpoint", "load_hparams_from_tags_csv",
           "load_hparams_from_yaml", "remove_stale_temporaries", "save_atomic", "save_checkpoint_file", "seal",
           "save_hparams_to_yaml", "torch_load"]


FORMAT = "mopt_fast.checkpoint/3"


# Files written before checksums (mopt_fast.checkpoint/1) still load, unverified, with a warning.
# (No single bit flip turns "/2" into "/1": '1' and '2' differ in two bits.)
_FORMAT_V1 = "mopt_fast.checkpoint/1"


# Files written before Lightning's layout: mopt_fast's own loop states under "loops", no
# "mopt_fast" entry. Checksummed as /3; still resumed.
_FORMAT_V2 = "mopt_fast.checkpoint/2"


# Lightning's marker: every checkpoint its Trainer writes has this entry (its version).
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"


# The version written into ours: the Lightning release whose layout they follow. Lightning runs
# no migration on a 2.x file, so it reads ours as its own.
LIGHTNING_LAYOUT_VERSION = "2.6.0"


# Hyperparameter entries (the module's and the data module's): the one place a checkpoint may hold
# objects other than plain data, pickled, as Lightning's (see _feed).
_HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


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


def _feed(h: Any, obj: Any, where: str, opaque: bool = False) -> None:
    """Feeds `obj` to the hash `h`, unambiguously: a type tag, then lengths and values. Covers
    what a weights_only load can give back; `where` names the entry for an error. `opaque`
    (inside the hyperparameters): any other object is fed as its type's name only, not its
    contents: pickled objects have no canonical byte form to hash (the file's zip records still
    carry their own CRCs)."""
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
            _feed(h, key, where, opaque)
            _feed(h, value, f"{where}[{key!r}]", opaque or (where == "checkpoint" and key in _HPARAMS_KEYS))
    elif isinstance(obj, (list, tuple)):
        h.update((b"z" if isinstance(obj, torch.Size) else b"t" if isinstance(obj, tuple) else b"l") + b"%d:" % len(obj))
        for i, value in enumerate(obj):
            _feed(h, value, f"{where}[{i}]", opaque)
    elif isinstance(obj, (set, frozenset)):  # no order to keep: the sorted digests of the items
        digests = []
        for value in obj:
            item = hashlib.sha256()
            _feed(item, value, f"{where}{{...}}", opaque)
            digests.append(item.digest())
        h.update(b"e%d:" % len(digests) + b"".join(sorted(digests)))
    elif opaque:
        text = f"{type(obj).__module__}.{type(obj).__qualname__}".encode()
        h.update(b"p%d:" % len(text) + text)
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


def seal(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """`ckpt` with the checksum of its contents added (what `load_checkpoint` checks)."""
    sealed = {k: v for k, v in ckpt.items() if k != _CHECKSUM_KEY}
    sealed[_CHECKSUM_KEY] = checksum(sealed)
    return sealed


def save_checkpoint_file(ckpt: dict[str, Any], *paths: str) -> None:
    """Writes the checkpoint dictionary `ckpt` (with its format marker) to each of `paths`,
    atomically (a path with a protocol, "s3://", "memory://": through fsspec, in one write), with
    the checksum of its contents added. A value a weights_only load could not
    read back is a TypeError here, before anything is written."""
    sealed = seal(ckpt)
    for path in paths:
        if is_url(path):  # through fsspec, as Lightning writes there: in one write, not atomically
            with _fsspec().open(path, "wb") as f:
                torch.save(sealed, f)
        else:
            save_atomic(sealed, path)


def is_url(path: str) -> bool:
    """A path with a protocol ("memory://", "s3://", "file://", "http://"): opened through fsspec
    (http(s) through torch.hub), as Lightning opens checkpoint paths."""
    return "://" in path and path.split("://", 1)[0].isidentifier()


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError as e:  # not a dependency of mopt_fast: only paths with a protocol need it
        raise ModuleNotFoundError("a path with a protocol (s3://, memory://, ...) needs fsspec: "
                                  "pip install fsspec") from e
    return fsspec


def torch_load(path: str | os.PathLike | IO, map_location: Any = None, weights_only: bool = True) -> Any:
    """``torch.load`` of a local path, a file object, or a URL as Lightning's ``_load`` reads them:
    http(s) downloaded, any other protocol through fsspec. Two differences from Lightning, both
    for safety: Lightning loads http(s) URLs with ``weights_only=False`` unless told otherwise,
    while here every source gets the caller's `weights_only` (True by default), as a file from the
    network is the last one to trust; and Lightning downloads through torch.hub's cache, which
    keys files by their name alone (a second ".../last.ckpt" from another run would load the
    first one's), while here each load downloads the file afresh into a temporary folder."""
    if not isinstance(path, (str, os.PathLike)):
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        with tempfile.TemporaryDirectory(prefix="mopt_fast_ckpt_") as folder:
            local = os.path.join(folder, "checkpoint.ckpt")
            torch.hub.download_url_to_file(path, local, progress=False)
            return torch.load(local, map_location=map_location, weights_only=weights_only)
    if is_url(path):
        with _fsspec().open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=weights_only)
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def _check_exists(path: str) -> None:
    if is_url(path):
        if path.startswith(("http://", "https://")):
            return  # a missing file is the download's error
        fs, inner = _fsspec().core.url_to_fs(path)
        if fs.isdir(inner):
            raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file")
        if not fs.isfile(inner):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")


def checkpoint_source(ckpt: Any) -> str | None:
    """"mopt_fast" or "lightning": who wrote the loaded checkpoint `ckpt`, by its marker (the
    ``format`` entry, or Lightning's ``pytorch-lightning_version``); None for anything else.
    Ours carry both markers: one with our checksum or ``"mopt_fast"`` entry is ours even when its
    ``format`` entry is damaged (and is then refused, not read as Lightning's, unchecked)."""
    if not isinstance(ckpt, dict):
        return None
    if "format" in ckpt or _CHECKSUM_KEY in ckpt or "mopt_fast" in ckpt:
        return "mopt_fast"
    if LIGHTNING_VERSION_KEY in ckpt:
        return "lightning"
    return None


def _not_a_checkpoint(path: str, ckpt: Any) -> ValueError:
    """The error for a file that loads but is no checkpoint either Trainer wrote, saying what it holds."""
    expected = (f"a checkpoint of mopt_fast (a dict with the format marker 'format': {FORMAT!r}) or of Lightning "
                f"(a dict with a {LIGHTNING_VERSION_KEY!r} entry), as Trainer.save_checkpoint and ModelCheckpoint write")
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        found = ("a plain state_dict (only tensors): load it with model.load_state_dict(torch.load(path)); it holds "
                 "no training state to resume from")
    elif isinstance(ckpt, dict):
        keys = sorted(map(str, ckpt))
        found = f"a dict with the keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    else:
        found = f"a {type(ckpt).__qualname__}"
    return ValueError(f"{path!r} is not a checkpoint of mopt_fast or Lightning: expected {expected}; found {found}")


def load_checkpoint(path: str, weights_only: bool = True,
                    read: Callable[[str, bool], Any] | None = None) -> dict[str, Any]:
    """Loads a checkpoint written by `Trainer.save_checkpoint` or `ModelCheckpoint`, of mopt_fast
    or of Lightning, with ``weights_only=True`` unless told otherwise (`torch_load`: a local path
    or one with a protocol). A mopt_fast checkpoint's checksum is checked (Lightning's have none).
    A truncated or corrupt file, or one that is no checkpoint of either, raises ValueError naming
    the file and what was expected; one that holds pickled objects (a hyperparameter that is an
    ``nn.Module``) raises `PickledCheckpointError` under ``weights_only=True``: an UnpicklingError,
    as Lightning's Trainer raises, and a ValueError. The returned dictionary has no checksum entry.
    `read(path, weights_only)`: how the dictionary is read (a user's CheckpointIO plugin), checked
    as any other; None: `torch_load` to the CPU. A sharded checkpoint's folder (written under
    ``strategy="fsdp"``) is read whole into this process (`sharded_checkpoint.load_sharded_checkpoint`)."""
    if read is None and not is_url(path):
        from mopt_fast.core.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint

        if is_sharded_checkpoint(path):
            return load_sharded_checkpoint(path, weights_only)
    if read is None:
        _check_exists(path)
    try:
        ckpt = torch_load(path, map_location="cpu", weights_only=weights_only) if read is None else read(
            path, weights_only)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        if weights_only and "Weights only load failed" in str(e):
            # A file holding pickled objects: torch's message (what to do), naming the file; the class
            # Lightning's Trainer raises here, and a ValueError as every other unreadable file.
            raise PickledCheckpointError(
                f"{path!r} is not a loadable checkpoint with weights_only=True: it holds objects other than tensors "
                "and plain data (e.g. a hyperparameter that is an nn.Module, pickled as Lightning does). If the file "
                f"comes from a trusted source, pass weights_only=False. {e}"
            ) from e
        raise _unloadable(path, e) from e
    except Exception as e:  # a damaged file can fail anywhere in the unpickler or the zip reader
        raise _unloadable(path, e) from e
    source = checkpoint_source(ckpt)
    if source is None:
        raise _not_a_checkpoint(path, ckpt)
    if source == "lightning":
        return ckpt
    marker = ckpt.get("format")
    if not isinstance(marker, str) or not marker.startswith("mopt_fast.checkpoint/"):
        raise ValueError(f"{path!r} is corrupt: its format marker is {marker!r}, not {FORMAT!r}")
    if marker == _FORMAT_V1:
        warnings.warn(f"{path!r} was written by an older mopt_fast, without a checksum: it is loaded unverified",
                      stacklevel=2)
        return ckpt
    if marker not in (FORMAT, _FORMAT_V2):
        raise ValueError(f"{path!r} is a checkpoint of a newer mopt_fast ({marker!r}); this one reads up to {FORMAT!r}")
    stored = ckpt.pop(_CHECKSUM_KEY, None)
    try:
        actual = checksum(ckpt)
    except Exception as e:  # a damaged file may hold what no checkpoint holds
        raise ValueError(f"{path!r} is corrupt: its contents cannot be checked ({e})") from e
    if (not isinstance(stored, str) or stored != actual) and not _consolidated_elsewhere(ckpt, stored):
        raise ValueError(
            f"{path!r} is corrupt: its contents do not match the checksum stored in it "
            f"(stored {stored!r}, computed {actual!r}); the file was damaged after it was written"
        )
    return ckpt


def _consolidated_elsewhere(ckpt: dict[str, Any], stored: Any) -> bool:
    """A sharded checkpoint's folder made one file by another tool (Lightning's
    consolidate_checkpoint): meta.pt's entries plus the tensors DCP wrote, renamed to
    ``state_dict`` / ``optimizer_states``. Its checksum is meta.pt's, over the rest; the
    tensors are as unchecked as DCP's shards were."""
    if not isinstance(ckpt.get("sharded"), dict) or not isinstance(stored, str):
        return False
    return stored == checksum({k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")})


class PickledCheckpointError(ValueError, pickle.UnpicklingError):
    """A checkpoint that only ``weights_only=False`` can load: an UnpicklingError, as torch (and
    so Lightning's Trainer) raises it, and a ValueError, as every other unreadable file here."""


def _unloadable(path: str, e: BaseException) -> ValueError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ValueError(
        f"{path!r} is not a loadable checkpoint (truncated, corrupt, not written by torch.save, or holding objects "
        f"other than tensors and plain data): {type(e).__name__}: {reason}"
    )


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
    with ``weights_only=True`` unless told otherwise. A sharded checkpoint's folder (``strategy="fsdp"``)
    is consolidated in memory, its tensors on the CPU."""
    load_weights_only = True if weights_only is None else weights_only
    if isinstance(checkpoint_path, (str, os.PathLike)):
        checkpoint_path = os.fspath(checkpoint_path)
    from mopt_fast.core.sharded_checkpoint import is_sharded_checkpoint

    if isinstance(checkpoint_path, str) and not is_url(checkpoint_path) and is_sharded_checkpoint(checkpoint_path):
        ckpt: Any = load_checkpoint(checkpoint_path, load_weights_only)
    else:
        ckpt = torch_load(checkpoint_path, map_location=map_location or _default_map_location,
                          weights_only=load_weights_only)
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
    if not is_url(path):
        return _LocalFileSystem()
    return _fsspec().core.url_to_fs(path)[0]


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

