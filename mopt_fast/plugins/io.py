"""Checkpoint IO: how a checkpoint dictionary reaches storage and comes back (Lightning's
`CheckpointIO` plugin interface).

The Trainer writes, reads and removes checkpoint files through ``trainer.strategy.checkpoint_io``.
The default, `TorchCheckpointIO`, is mopt_fast's own format on disk: an atomic write (temporary
file, fsync, rename) with a checksum, a path with a protocol (``s3://``, ``memory://``) through
fsspec. A plugin of the user's (``Trainer(plugins=[MyIO()])``, ours or Lightning's class) replaces
it for every save, load and removal; what it hands back is checked as any checkpoint is (format,
checksum) before anything is restored.
"""
from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from typing import Any

from mopt_fast.core.saving import filesystem, is_url, save_checkpoint_file, torch_load

__all__ = ["CheckpointIO", "TorchCheckpointIO"]


class CheckpointIO(ABC):
    """Lightning's interface: subclass it to save checkpoints elsewhere or otherwise."""

    @abstractmethod
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write `checkpoint` (a dictionary of tensors and plain data) to `path`."""

    @abstractmethod
    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read back what `save_checkpoint` wrote to `path`."""

    @abstractmethod
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Delete what `save_checkpoint` wrote to `path`, if it is there."""

    def teardown(self) -> None:  # noqa: B027 (optional, as in Lightning's interface)
        """Called when the run ends (Lightning's hook, for a plugin that holds resources)."""


class TorchCheckpointIO(CheckpointIO):
    """mopt_fast's files: ``torch.save`` written atomically with a checksum, read with
    ``weights_only`` (True unless told otherwise), local paths or fsspec URLs."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:  # Lightning's TorchCheckpointIO refuses them the same way
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`. Please implement your custom `CheckpointIO`"
                " to define how you'd like to use `storage_options`."
            )
        save_checkpoint_file(checkpoint, os.fspath(path))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return torch_load(os.fspath(path), map_location=map_location or "cpu",
                          weights_only=True if weights_only is None else weights_only)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        target = os.fspath(path)
        if is_url(target):
            fs = filesystem(target)
            if fs.exists(target):
                fs.rm(target, recursive=True)
        elif os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
