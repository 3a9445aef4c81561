"""LambdaCallback: a callback made on the spot from functions, one per hook (Lightning 2.6's
``lightning.pytorch.callbacks.LambdaCallback``).

Each function given becomes that hook of this instance and gets the hook's arguments
``(trainer, pl_module, ...)``; the hooks not given stay the base class's no-ops, so the Trainer
does not call them.
"""
from __future__ import annotations

__all__ = ["LambdaCallback"]

from collections.abc import Callable

from mopt_fast.callbacks.callback import Callback


class LambdaCallback(Callback):
    """``LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: ...)``: the hooks Lightning's
    LambdaCallback takes, by name (the parameters are spelled out so that a CLI or an IDE sees them)."""

    def __init__(
        self,
        setup: Callable | None = None,
        teardown: Callable | None = None,
        on_fit_start: Callable | None = None,
        on_fit_end: Callable | None = None,
        on_sanity_check_start: Callable | None = None,
        on_sanity_check_end: Callable | None = None,
        on_train_batch_start: Callable | None = None,
        on_train_batch_end: Callable | None = None,
        on_train_epoch_start: Callable | None = None,
        on_train_epoch_end: Callable | None = None,
        on_validation_epoch_start: Callable | None = None,
        on_validation_epoch_end: Callable | None = None,
        on_test_epoch_start: Callable | None = None,
        on_test_epoch_end: Callable | None = None,
        on_validation_batch_start: Callable | None = None,
        on_validation_batch_end: Callable | None = None,
        on_test_batch_start: Callable | None = None,
        on_test_batch_end: Callable | None = None,
        on_train_start: Callable | None = None,
        on_train_end: Callable | None = None,
        on_validation_start: Callable | None = None,
        on_validation_end: Callable | None = None,
        on_test_start: Callable | None = None,
        on_test_end: Callable | None = None,
        on_exception: Callable | None = None,
        on_save_checkpoint: Callable | None = None,
        on_load_checkpoint: Callable | None = None,
        on_before_backward: Callable | None = None,
        on_after_backward: Callable | None = None,
        on_before_optimizer_step: Callable | None = None,
        on_before_zero_grad: Callable | None = None,
        on_predict_start: Callable | None = None,
        on_predict_end: Callable | None = None,
        on_predict_batch_start: Callable | None = None,
        on_predict_batch_end: Callable | None = None,
        on_predict_epoch_start: Callable | None = None,
        on_predict_epoch_end: Callable | None = None,
    ) -> None:
        # Every parameter is a hook name: the ones given shadow the class's no-op on this instance.
        hooks = {name: fn for name, fn in locals().items() if name not in ("self", "__class__")}
        for name, fn in hooks.items():
            if fn is not None:
                setattr(self, name, fn)
