"""Sharded checkpoints (``Trainer(strategy="fsdp")``) read in one process: the folder layout and
its consolidation into a single-file checkpoint.

A sharded checkpoint is a FOLDER, laid out as Lightning's FSDPStrategy(state_dict_type="sharded")
lays it out: the tensors written by every rank through ``torch.distributed.checkpoint`` (DCP:
``.metadata`` and one ``__<rank>_0.distcp`` file per rank) under the keys ``"model"`` (the module's
state dict) and ``"optimizer_0"``, ``"optimizer_1"``, ... (each optimizer's state, keyed by
parameter name as ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` gives it),
and ``meta.pt``: everything else of the checkpoint (loops, schedulers, callbacks, RNG,
hyperparameters), a mopt_fast checkpoint file of its own (checksummed, written atomically) with
each rank's own state under ``["mopt_fast"]["ranks"]``.

Reading one needs no process group: DCP's loader is run with ``no_dist=True`` and an empty
planner, which rebuilds the full (unsharded) tensors from every rank's file, as
``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does. The whole checkpoint must
then fit in this process's memory.
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["META_FILE", "is_sharded_checkpoint", "load_sharded_checkpoint", "sharded_tensor_keys"]

# Lightning's name for the file of the non-tensor entries (lightning.fabric.utilities.load).
META_FILE = "meta.pt"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """`path` is a local folder holding a sharded checkpoint (Lightning's test: a meta.pt in it)."""
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def sharded_tensor_keys(optimizers: int) -> list[str]:
    """The top-level DCP keys of a checkpoint with `optimizers` optimizer states (Lightning's)."""
    return ["model", *(f"optimizer_{i}" for i in range(optimizers))]


def read_meta(folder: str, weights_only: bool = True) -> dict[str, Any]:
    """The checked ``meta.pt`` of a sharded folder; a folder whose DCP metadata is missing (a save
    that did not finish and was not renamed into place cannot look like this, but a copy can) is
    refused here, before anything is loaded."""
    from mopt_fast.core.saving import load_checkpoint

    if not os.path.isfile(os.path.join(folder, ".metadata")):
        raise ValueError(f"{folder!r} is not a complete sharded checkpoint: it has a {META_FILE} but no DCP "
                         "'.metadata' file")
    return load_checkpoint(os.path.join(folder, META_FILE), weights_only=weights_only)


def load_sharded_checkpoint(folder: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """The sharded checkpoint in `folder` as one dictionary in the single-file layout (``state_dict``
    and ``optimizer_states`` with full tensors on the CPU, the rest from meta.pt), in this process
    alone: no process group is used, whatever world size wrote it. Rank 0's own state (RNG, loops)
    is the checkpoint's; the other ranks' are dropped."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folder = os.fspath(folder)
    meta = read_meta(folder, weights_only)
    tensors: dict[str, Any] = {}
    # What format_utils.dcp_to_torch_save runs, kept in memory: every key of the checkpoint, its
    # tensors rebuilt whole from all ranks' shards, in this process only.
    _load_state_dict(tensors, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    ckpt = dict(meta)
    ours = ckpt.get("mopt_fast")
    if isinstance(ours, dict) and "ranks" in ours:
        ckpt["mopt_fast"] = {k: v for k, v in ours.items() if k != "ranks"}
    ckpt["state_dict"] = tensors.pop("model")
    count = sum(1 for key in tensors if key.startswith("optimizer_"))
    if count:
        ckpt["optimizer_states"] = [tensors.pop(f"optimizer_{i}") for i in range(count)]
    return ckpt
