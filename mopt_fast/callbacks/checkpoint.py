"""Checkpoint: the base class of the checkpoint callbacks (Lightning 2.6's
``lightning.pytorch.callbacks.Checkpoint``).

The Trainer recognises a checkpoint callback by this class: ``trainer.checkpoint_callbacks`` lists
them, they run last among the callbacks (and their on_train_epoch_end after the module's, so they
see what it logs there), a Trainer given one adds no default `ModelCheckpoint`, and
``enable_checkpointing=False`` refuses them. Subclass it for a checkpoint callback of your own.
"""
from __future__ import annotations

__all__ = ["Checkpoint"]

from mopt_fast.callbacks.callback import Callback


class Checkpoint(Callback):
    """The base class of `ModelCheckpoint` and `OnExceptionCheckpoint`; no behaviour of its own."""

    _monitoring = True  # on_train_epoch_end after the module's (Lightning's order for checkpoints)
