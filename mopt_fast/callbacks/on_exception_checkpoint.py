"""OnExceptionCheckpoint: save a checkpoint when fit, validate, test or predict raises (Lightning
2.6's ``lightning.pytorch.callbacks.OnExceptionCheckpoint``).

The file is ``<dirpath>/<filename>.ckpt``, overwritten by each exception and removed when a run
ends without one. While the callback is in the Trainer, ``fit()`` without a ``ckpt_path``
resumes from the newest "last" checkpoint, this file included (Lightning's rule, in the Trainer's
checkpoint-path choice).
"""
from __future__ import annotations

__all__ = ["OnExceptionCheckpoint"]

import os
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.checkpoint import Checkpoint

if TYPE_CHECKING:
    from mopt_fast.core.protocol import CheckpointTrainer


class OnExceptionCheckpoint(Checkpoint):
    """`dirpath`: the folder, required up front (an exception can come before setup decides any
    default); `filename`: the file's name without the extension (not empty)."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        super().__init__()
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: CheckpointTrainer, *_: Any, **__: Any) -> None:
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: CheckpointTrainer, *_: Any, **__: Any) -> None:
        # a run that ended normally: the checkpoint of an earlier failure is stale
        trainer.strategy.remove_checkpoint(self.ckpt_path)
