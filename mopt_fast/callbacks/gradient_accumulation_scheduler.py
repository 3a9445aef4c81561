"""GradientAccumulationScheduler: the number of batches whose gradients add up before each
optimizer step, changed by epoch (Lightning 2.6's ``lightning.pytorch.callbacks.
GradientAccumulationScheduler``).

It sets ``trainer.accumulate_grad_batches`` at the start of every training epoch, so the fit loop
reads the new factor from that epoch's first batch on; the last batches of an epoch that do not
fill a group still step the optimizer, as with a fixed factor.
"""
from __future__ import annotations

__all__ = ["GradientAccumulationScheduler"]

import warnings
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.callback import Callback
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer


def _overrides(pl_module: Any, name: str) -> bool:
    """The module replaces the LightningModule hook `name` (in its class or on the instance), as
    Lightning's ``is_overridden(name, pl_module)`` answers."""
    hook = getattr(pl_module, name, None)
    if hook is None:
        return False
    base = next((cls for cls in type(pl_module).__mro__
                 if cls.__name__ == "LightningModule" and name in vars(cls)), None)
    if base is None:
        return True
    return getattr(hook, "__func__", hook) is not vars(base)[name]


class GradientAccumulationScheduler(Callback):
    """`scheduling`: ``{epoch: factor}``, epochs counted from 0; from each epoch listed on,
    gradients of `factor` batches are accumulated before a step (1 before the first epoch listed).
    ``{4: 2}``: one step per batch for epochs 0-3, one per two batches from epoch 4.

    The dictionary given is completed in place with ``0: 1`` when it does not start at epoch 0
    (Lightning does the same).
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        super().__init__()
        if not scheduling:
            raise TypeError("Empty dict cannot be interpreted correct")
        if any(not isinstance(epoch, int) or epoch < 0 for epoch in scheduling):
            raise MisconfigurationException(
                f"Epoch should be an int greater than or equal to 0. Got {list(scheduling.keys())}."
            )
        if any(not isinstance(factor, int) or factor < 1 for factor in scheduling.values()):
            raise MisconfigurationException(
                f"Accumulation factor should be an int greater than 0. Got {list(scheduling.values())}."
            )
        if min(scheduling) != 0:  # the epochs before the first one listed do not accumulate
            scheduling.update({0: 1})
        self.scheduling = scheduling
        self.epochs = sorted(scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        """Some epoch accumulates more than one batch."""
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor of `epoch`: that of the last scheduled epoch at or before it."""
        started = [e for e in self.epochs if e <= epoch]
        return self.scheduling[started[-1]] if started else 1

    def on_train_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        """Lightning's checks of the settings the schedule cannot work with, before the first epoch."""
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                """Automatic gradient accumulation and the `GradientAccumulationScheduler` is not supported for
                manual optimization. Please remove the callback or switch to automatic optimization."""
            )
        steps_hooks_overridden = _overrides(pl_module, "optimizer_step") or _overrides(pl_module,
                                                                                      "optimizer_zero_grad")
        if steps_hooks_overridden and self.going_to_accumulate_grad_batches() and trainer.is_global_zero:
            warnings.warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding"
                " `LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch"
                " (rather, they are called on every optimization step).",
                stacklevel=2,
            )
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler`"
                " callback. Either remove `accumulate_grad_batches` from the Trainer or remove the callback."
            )

    def on_train_epoch_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)
