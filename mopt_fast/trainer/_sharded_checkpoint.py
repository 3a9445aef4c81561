"""Sharded checkpoints of an FSDP2 fit, written and read with ``torch.distributed.checkpoint``
(DCP) by every rank: no rank ever gathers the full model (the layout: core/sharded_checkpoint.py).

Saving (`ShardedCheckpointer.save`): the module's and optimizers' states stay DTensor shards
(``get_optimizer_state_dict`` keys the optimizer states by parameter name, so that DCP can
reshard them); every rank writes its own shards into a hidden sibling folder
``.<name>.partial``; rank 0 then writes ``meta.pt`` (the rest of the checkpoint, with each rank's
own RNG, loop and metric state gathered under ``["mopt_fast"]["ranks"]``) and renames the folder
into place. DCP's save ends with rank 0 collecting every rank's write result, so rank 0's rename
comes after every rank is done; a save that fails or is killed midway leaves the previous
checkpoint as it was (an existing folder of the same name is replaced by two renames, old aside
then new in place, then the old one deleted).

With ``async_save=True`` the tensors are copied (DCP's staging) and written by a background
thread over a gloo group of its own (the training's collectives must not interleave with its);
the training goes on meanwhile. The next save, a removal of a checkpoint (ModelCheckpoint's
rotation) and the end of the run wait for it first, and the folder only appears under its name
(and so is only found by ``ckpt_path="last"``) once every rank's write is complete.

Loading (`ShardedCheckpointer.load`): every rank reads its own shards of the module's and
optimizers' states into copies of its current ones (DCP reshards a checkpoint written by another
number of ranks), and its own per-rank state when the world size is the one that wrote it.
Nothing is put into the module or the optimizers here: the Trainer's restore does it
(`FSDPStrategy.load_model_state` / `load_optimizer_state`), after its checks.
"""
from __future__ import annotations

import copy
import os
import shutil
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mopt_fast.core.saving import is_url, save_checkpoint_file
from mopt_fast.core.sharded_checkpoint import META_FILE, read_meta
from mopt_fast.exceptions import not_built

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ShardedCheckpointer"]


def _partial_folder(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.partial")


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(tmp: str, path: str) -> None:
    """`tmp` renamed to `path`; what was at `path` (a file, a link or an older folder) goes."""
    if os.path.islink(path) or os.path.isfile(path):
        os.replace(tmp, path)  # a file (or link) is replaced in one rename
    elif os.path.isdir(path):
        old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old")
        if os.path.lexists(old):
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_folder(os.path.dirname(path))


def _cloned(state: Any) -> Any:
    """A copy of a state dict's tensors (DTensors stay DTensors), to load into without touching
    the live parameters and optimizer states."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _cloned(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cloned(v) for v in state]
    return copy.deepcopy(state)


@dataclass
class _PendingSave:
    """An async save under way: DCP's future, where it writes, where it goes, and meta.pt's content."""

    future: Any
    tmp: str
    path: str
    meta: dict[str, Any]
    removals: list[str] = field(default_factory=list)  # checkpoints to delete once this one is in place


class ShardedCheckpointer:
    """Writes and reads the sharded checkpoints of one FSDPStrategy (see the module's docstring)."""

    def __init__(self, async_save: bool) -> None:
        self.async_save = async_save
        self._pending: _PendingSave | None = None
        self._group: Any = None  # the gloo group of the async writes, made at the first async save

    # -- saving ----------------------------------------------------------------------------------
    def save(self, checkpoint: dict[str, Any], filepath: str | os.PathLike, rank: int, world_size: int) -> None:
        """Write `checkpoint` (``state_dict`` and ``optimizer_states`` sharded) as a folder at `filepath`."""
        path = os.fspath(filepath)
        if is_url(path):
            raise not_built(f"a sharded checkpoint at {path!r} (strategy='fsdp' writes local or shared-filesystem "
                            "folders)", "save to a local path")
        path = os.path.abspath(path)
        self.wait()  # one save at a time: the previous one is in place before this one starts
        tensors = {"model": checkpoint["state_dict"]}
        optimizer_states = checkpoint.get("optimizer_states", [])
        tensors.update({f"optimizer_{i}": state for i, state in enumerate(optimizer_states)})
        meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        meta["sharded"] = {"world_size": world_size, "optimizers": len(optimizer_states),
                           "weights_only": "optimizer_states" not in checkpoint}
        ours = meta.get("mopt_fast")
        if isinstance(ours, dict):  # each rank's own RNG, loop and metric state (an exact resume needs them)
            ranks: list[Any] = [None] * world_size
            dist.all_gather_object(ranks, ours)
            meta["mopt_fast"] = {**ours, "ranks": ranks}
        tmp = _partial_folder(path)
        if rank == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(tmp):  # left by a save that was killed
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        dist.barrier()  # the folder is there, empty, before any rank writes into it
        from torch.distributed.checkpoint import FileSystemWriter

        writer = FileSystemWriter(tmp)
        if self.async_save:
            import torch.distributed.checkpoint as dcp

            if self._group is None:
                self._group = dist.new_group(backend="gloo")
            future = dcp.async_save(tensors, storage_writer=writer, process_group=self._group)
            self._pending = _PendingSave(getattr(future, "upload_completion", future), tmp, path,
                                         copy.deepcopy(meta))
            return
        import torch.distributed.checkpoint as dcp

        try:
            dcp.save(tensors, storage_writer=writer)
        except BaseException:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if rank == 0:
            self._finish(tmp, path, meta)

    @staticmethod
    def _finish(tmp: str, path: str, meta: dict[str, Any]) -> None:
        save_checkpoint_file(meta, os.path.join(tmp, META_FILE))
        _move_into_place(tmp, path)

    def wait(self, synchronize: bool = True) -> None:
        """The async save under way, completed and moved into place by rank 0, then the removals
        it held back; nothing when none is. `synchronize`: every rank then waits for rank 0's
        rename (a barrier), so that none goes on to read the folder before it is there."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        rank = dist.get_rank()
        try:
            pending.future.result()
        except BaseException:
            if rank == 0:
                shutil.rmtree(pending.tmp, ignore_errors=True)
            raise
        if rank == 0:
            self._finish(pending.tmp, pending.path, pending.meta)
            for removed in pending.removals:
                _remove(removed)
        if synchronize:
            dist.barrier()

    def remove(self, path: str | os.PathLike, remove_now: Any) -> None:
        """Delete a checkpoint (rank 0): at once, or, while an async save is under way, once it is
        in place (the checkpoint it replaces must outlive it)."""
        if self._pending is not None:
            self._pending.removals.append(os.fspath(path))
        else:
            remove_now(path)

    def teardown(self, failed: bool) -> None:
        """The end of a run: the save under way completed; its error raised, or, after a run that
        failed anyway, a warning (the run's own error is the one to see)."""
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        try:
            self.wait(synchronize=not failed)  # after a failure a rank may be gone: no barrier
        except (Exception, CheckpointException) as e:
            if not failed:
                raise
            warnings.warn(f"the last asynchronous sharded checkpoint save failed: {e}", stacklevel=2)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, folder: str | os.PathLike, model: nn.Module, optimizers: list[torch.optim.Optimizer],
             rank: int, world_size: int, weights_only: bool) -> dict[str, Any]:
        """The checkpoint in `folder` with this rank's shards of the module's (and, when the
        checkpoint has one state per optimizer given, the optimizers') states, in copies."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        self.wait()
        path = os.fspath(folder)
        ckpt = read_meta(path, weights_only)
        info = ckpt.pop("sharded", {})
        saved = int(info.get("optimizers", 0))
        tensors: dict[str, Any] = {"model": _cloned(get_model_state_dict(model))}
        load_optimizers = bool(saved) and saved == len(optimizers)
        if load_optimizers:
            for i, opt in enumerate(optimizers):
                tensors[f"optimizer_{i}"] = _cloned(get_optimizer_state_dict(model, opt))
        dcp.load(tensors, storage_reader=FileSystemReader(path))
        ckpt["state_dict"] = tensors["model"]
        if not info.get("weights_only", False):
            # The states, or as many placeholders as the checkpoint holds, for the Trainer's count check.
            ckpt["optimizer_states"] = ([tensors[f"optimizer_{i}"] for i in range(saved)] if load_optimizers
                                        else [None] * saved)
        ours = ckpt.get("mopt_fast")
        if isinstance(ours, dict):
            ranks = ours.pop("ranks", None)
            if ranks is not None and len(ranks) == world_size:  # the same ranks: each resumes its own state
                ckpt["mopt_fast"] = ranks[rank]
        return ckpt


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
