"""What the Trainer does with a module before a run, as Lightning 2.6's `Trainer._run`: the
callbacks the module brings (`LightningModule.configure_callbacks`, Lightning's
`_CallbackConnector._attach_model_callbacks`), and `configure_model`, called where `init_module`
puts tensors (Lightning's `_call_configure_model` and `Strategy.tensor_init_context`)."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from torch.overrides import TorchFunctionMode

from mopt_fast.callbacks.callback import Callback
from mopt_fast.callbacks.checkpoint import Checkpoint
from mopt_fast.core.module import LightningModule
from mopt_fast.trainer._args import info
from mopt_fast.trainer._hooks import is_overridden
from mopt_fast.trainer._warn import warn

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["EmptyInit", "attach_model_callbacks", "attach_model_logging_functions", "call_configure_model", "reorder_callbacks", "tensor_init_context",
           "verify_configure_model"]


def _lightning_class(name: str) -> type | None:
    """`name` of Lightning's callbacks package when the user has imported it (never imported here)."""
    for package in ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks"):
        module = sys.modules.get(package)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type):
            return cls
    return None


def attach_model_logging_functions(trainer: Trainer, model: LightningModule) -> None:
    """``callback.log`` / ``callback.log_dict`` are the module's, set on every callback at every run
    (Lightning's `_attach_model_logging_functions`): a callback logs as the module does, under the
    hook that is running."""
    for callback in trainer.callbacks:
        callback.log = model.log
        callback.log_dict = model.log_dict


def _is_checkpoint(callback: Any) -> bool:
    """A checkpoint callback: ours, or one of Lightning's `Checkpoint` when the user brought it."""
    lightning_checkpoint = _lightning_class("Checkpoint")
    return isinstance(callback, Checkpoint) or (
        lightning_checkpoint is not None and isinstance(callback, lightning_checkpoint))


def reorder_callbacks(callbacks: list[Any]) -> list[Any]:
    """Checkpoint callbacks last, each group in its order (Lightning's `_reorder_callbacks`; the
    tuner's callbacks, which Lightning puts first, are not built here)."""
    checkpoints = [c for c in callbacks if _is_checkpoint(c)]
    return [c for c in callbacks if not _is_checkpoint(c)] + checkpoints


def attach_model_callbacks(trainer: Trainer, model: LightningModule, run_as: Callable[..., Any]) -> None:
    """`model.configure_callbacks()` merged into ``trainer.callbacks`` at the start of every run, as
    Lightning: a model callback replaces the Trainer's callbacks of its type or of a parent type
    (said in an INFO line), the checkpoint callbacks go last. `run_as` calls the hook as the
    running hook."""
    model_callbacks = run_as("configure_callbacks", model.configure_callbacks)
    if not model_callbacks:
        return
    model_callbacks = list(model_callbacks) if isinstance(model_callbacks, Sequence) else [model_callbacks]
    trainer_types = {type(c) for c in trainer.callbacks}
    trainer_types.discard(Callback)  # an unmodified Callback added as is would be filtered out below
    lightning_base = _lightning_class("Callback")
    if lightning_base is not None:
        trainer_types.discard(lightning_base)
    override_types = set()
    for model_type in {type(c) for c in model_callbacks}:
        for trainer_type in trainer_types:
            if issubclass(model_type, trainer_type):
                override_types.add(trainer_type)
                break
    if override_types:
        info(  # on rank 0 by the launcher's environment: the strategy does not know the rank yet
            "The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
            f"callbacks passed to Trainer: {', '.join(sorted(t.__name__ for t in override_types))}",
        )
    kept = [c for c in trainer.callbacks if type(c) not in override_types]
    trainer.callbacks = reorder_callbacks(kept + model_callbacks)


class EmptyInit(TorchFunctionMode):
    """Modules made in this mode keep uninitialized memory: the `torch.nn.init` functions return
    their tensor untouched (Lightning's `_EmptyInit`; for weights a checkpoint overwrites)."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.enabled and getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def tensor_init_context(trainer: Trainer, empty_init: bool | None = None) -> Generator[None, None, None]:
    """Tensors made inside go straight to the Trainer's device (Lightning's single-device and DDP
    `tensor_init_context`); uninitialized with `empty_init`; in the precision's dtype under
    "16-true", "bf16-true" and "64-true" (the other precisions keep the default dtype, as Lightning's do)."""
    with EmptyInit(enabled=bool(empty_init)), trainer.root_device, trainer.precision_plugin.tensor_init_context():
        yield


def call_configure_model(trainer: Trainer, model: LightningModule, run_as: Callable[..., Any]) -> None:
    """The module's `configure_model` (and the deprecated `configure_sharded_model`) inside
    `tensor_init_context`, when overridden: before `configure_optimizers`, at every run, as
    Lightning (the hook must be idempotent)."""
    if is_overridden("configure_sharded_model", model, LightningModule):
        run_as("configure_sharded_model", model.configure_sharded_model)
    if is_overridden("configure_model", model, LightningModule):
        with tensor_init_context(trainer):
            run_as("configure_model", model.configure_model)


def verify_configure_model(model: LightningModule) -> None:
    """Lightning's check of the deprecated hook: not both, and a deprecation warning."""
    if not is_overridden("configure_sharded_model", model, LightningModule):
        return
    name = type(model).__name__
    if is_overridden("configure_model", model, LightningModule):
        raise RuntimeError(
            f"Both `{name}.configure_model`, and `{name}.configure_sharded_model` are overridden. The latter is"
            " deprecated and it should be replaced with the former."
        )
    warn(
        f"You have overridden `{name}.configure_sharded_model` which is deprecated. Please override the"
        " `configure_model` hook instead. Instantiation with the newer hook will be created on the device right"
        " away and have the right data type depending on the precision setting in the Trainer.",
        DeprecationWarning,
    )
