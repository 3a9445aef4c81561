"""The Callback base class (its hooks are core/hooks.py's `CallbackHooks`), the state every
callback checkpoints (state_key, state_dict), and the helpers the callbacks share.

A callback's hooks take ``(trainer, pl_module, ...)`` and run before the module's hook of the same
name (except on_train_epoch_end, where EarlyStopping and the checkpoint callbacks run after the
module's, as in Lightning). The Trainer only calls the hooks a callback overrides.
"""
from __future__ import annotations

__all__ = ["Callback", "rank_zero_info", "reduce_boolean_decision", "trainer_fn", "validate_callbacks_list"]

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.core.hooks import CallbackHooks

if TYPE_CHECKING:
    from mopt_fast.core.protocol import CallbackTrainer

# Lightning's console logger set-up: INFO messages (EarlyStopping(verbose=True), ModelCheckpoint(verbose=True))
# go to stderr unless the application configured logging itself.
log = logging.getLogger("mopt_fast.trainer")
log.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers():
    log.addHandler(logging.StreamHandler())
    log.propagate = False


def rank_zero_info(trainer: CallbackTrainer | None, message: str) -> None:
    if trainer is None or trainer.is_global_zero:
        log.info(message)


class Callback(CallbackHooks):
    """Override any of the hooks in `core.hooks.CALLBACK_HOOKS`; each gets ``(trainer, pl_module, *hook_args)``.

    A callback with state returns it from `state_dict` (plain data: tensors, numbers, strings,
    lists, dicts) and takes it back in `load_state_dict`; checkpoints store it under `state_key`.
    """

    # EarlyStopping and checkpoint callbacks: their on_train_epoch_end runs after the module's.
    _monitoring = False

    @property
    def state_key(self) -> str:
        """Where this callback's state lives in ``checkpoint["callbacks"]`` (unique per Trainer for
        callbacks with state)."""
        return self.__class__.__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{self.__class__.__qualname__}{repr(kwargs)}"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


# -- what the Trainer calls for every callback ------------------------------------------------------
def _has_default_state_dict(callback: Any) -> bool:
    """`callback` keeps the stateless state_dict of mopt_fast's or Lightning's Callback base."""
    owner = next((c for c in type(callback).__mro__ if "state_dict" in vars(c)), None)
    return owner is Callback or (owner is not None and owner.__name__ == "Callback"
                                 and owner.__module__.endswith("callbacks.callback"))


def validate_callbacks_list(callbacks: Iterable[Callback]) -> None:
    """Lightning's check at Trainer(...): two callbacks with state may not share a state_key."""
    seen: set[str] = set()
    for cb in callbacks:
        if _has_default_state_dict(cb):
            continue
        if cb.state_key in seen:
            raise RuntimeError(
                f"Found more than one stateful callback of type `{type(cb).__name__}`. In the current"
                " configuration, this callback does not support being saved alongside other instances of the same type."
                f" Please consult the documentation of `{type(cb).__name__}` regarding valid settings for"
                " the callback state to be checkpointable."
                " HINT: The `callback.state_key` must be unique among all callbacks in the Trainer."
            )
        seen.add(cb.state_key)


def reduce_boolean_decision(trainer: CallbackTrainer, decision: bool, all: bool = True) -> bool:  # noqa: A002
    """Every rank's `decision` combined (all of them, or any): the same answer on every rank."""
    if trainer.world_size <= 1:
        return bool(decision)
    t = trainer.strategy.reduce(torch.tensor(float(bool(decision)), device=trainer.root_device), reduce_op="sum")
    return bool(t.item() == trainer.world_size) if all else bool(t.item() > 0)


def trainer_fn(trainer: CallbackTrainer) -> str:
    """What the trainer is running: "fit", "validate", "test" or "predict" (Lightning's
    ``trainer.state.fn``); "fit" for a Trainer without a state."""
    state = getattr(trainer, "state", None)
    fn = getattr(state, "fn", None)
    if fn is None:
        return "fit"
    return str(getattr(fn, "value", fn))


