"""The hook vocabulary of Lightning 2.6, module and callback, in one place
(``lightning.pytorch.core.hooks`` and the hooks of ``lightning.pytorch.callbacks.Callback``):
`ModelHooks`, mixed into `LightningModule`, and `CallbackHooks`, the base of `Callback`, so the
Trainer finds every hook and a user's ``super().on_test_epoch_end()`` works; `CALLBACK_HOOKS`, the
names the Trainer dispatches to callbacks, and `ALWAYS_CALLED`, the module hooks whose default
does something. `DataHooks`, mixed into both LightningModule and LightningDataModule: the
batch-transfer hooks (`BATCH_TRANSFER_HOOKS`), called only when one is overridden, and
`move_data_to_device`, how a batch moves otherwise. Defaults are Lightning's: no-ops, except the model-mode hooks (eval / train),
`on_validation_model_zero_grad` and `predict_step` (``self(batch)``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import ModuleTrainer, TrainerProtocol

    _ModuleBase = torch.nn.Module  # what ModelHooks is mixed with (in LightningModule)
else:
    _ModuleBase = object

__all__ = ["ALWAYS_CALLED", "BATCH_TRANSFER_HOOKS", "CALLBACK_HOOKS", "CallbackHooks", "DataHooks", "ModelHooks",
           "move_data_to_device"]

# Every hook the Trainer calls on callbacks (with ``trainer, pl_module``), and on the module too
# where it has a hook of that name.
CALLBACK_HOOKS = (
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start",
    "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end", "on_exception",
)

# Module hooks whose default does something: the Trainer always calls them.
ALWAYS_CALLED = (
    "optimizer_step", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step", "backward",
    "on_validation_model_eval", "on_validation_model_zero_grad", "on_test_model_eval", "on_predict_model_eval",
)


# The batch-transfer hooks, in the order the loops call them on each batch, on the module or on the
# data module (Lightning's `_DataHookSelector`). Called only when one of them is overridden.
BATCH_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def move_data_to_device(batch: Any, device: torch.device) -> Any:
    """`batch` on `device`: tensors, and objects with a ``to(device)`` method, in lists, tuples,
    named tuples and dicts (Lightning's `move_data_to_device`); asynchronous only to an
    accelerator (a copy to the CPU must be complete when it returns)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type not in ("cpu", "mps"))
    if isinstance(batch, Mapping):  # typeshed's Mapping declares no constructor; dict-like ones take a dict
        return type(batch)({k: move_data_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_data_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_data_to_device(v, device) for v in batch)
    to = getattr(batch, "to", None)
    if callable(to) and not isinstance(batch, (str, bytes, type)):  # a batch class of the user's
        moved = to(device)
        return batch if moved is None else moved
    return batch


class DataHooks:
    """The batch-transfer hooks of the module and the data module (Lightning's `DataHooks`), in the
    order the loops call them: `on_before_batch_transfer`, `transfer_batch_to_device`,
    `on_after_batch_transfer`. When the data module overrides one, its hook is called instead of
    the module's."""

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move `batch` to `device`; override it for a batch type of your own."""
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter `batch` before it moves to the device."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Alter `batch` once it is on the device."""
        return batch


class ModelHooks(_ModuleBase):
    """The hooks of a LightningModule, and test_step / predict_step with their dataloaders."""

    if TYPE_CHECKING:
        @property
        def trainer(self) -> ModuleTrainer: ...  # LightningModule's

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to (or edit) a checkpoint before it is written; plain data and tensors only."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what `on_save_checkpoint` added, when a fit resumes from the checkpoint."""

    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad()

    def on_validation_model_eval(self) -> None:
        self.eval()

    def on_validation_model_train(self) -> None:
        # The Trainer then puts each submodule back in the mode it had before validation.
        self.train()

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Override to run `trainer.test`; logs with ``self.log`` as validation_step does."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """One batch's predictions: by default ``self(batch)``."""
        batch = kwargs.get("batch", args[0])
        return self(batch)

    def test_dataloader(self) -> Any:
        raise MisconfigurationException("`test_dataloader` must be implemented to be used with the Lightning Trainer")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(
            "`predict_dataloader` must be implemented to be used with the Lightning Trainer"
        )

    def prepare_data(self) -> None:
        """Download or write data once per node (local rank 0) before `setup`."""

    def configure_model(self) -> None:
        """Build layers here to have them made on the Trainer's device: called by fit, validate,
        test and predict after `setup`, before `configure_optimizers`, at every run (so it must
        return early when the layers exist), and by `load_from_checkpoint`."""

    def configure_sharded_model(self) -> None:
        """Deprecated (as in Lightning): override `configure_model` instead."""

    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_test_model_eval(self) -> None:
        model = self.trainer.model
        assert model is not None  # the Trainer runs the hook with its model attached
        model.eval()

    def on_test_model_train(self) -> None:
        model = self.trainer.model
        assert model is not None  # the Trainer runs the hook with its model attached
        model.train()

    def on_predict_model_eval(self) -> None:
        model = self.trainer.model
        assert model is not None  # the Trainer runs the hook with its model attached
        model.eval()


class CallbackHooks:
    """The hooks of a Callback: ``(trainer, pl_module, ...)``, no-ops. The Trainer passes itself,
    which implements `TrainerProtocol`; a callback may declare the narrower protocol it uses
    (`CallbackTrainer`, `CheckpointTrainer`), or ``Any``, as an override may widen a parameter."""

    def on_save_checkpoint(self, trainer: TrainerProtocol, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Called when a checkpoint is saved, after the callbacks' states are in it."""

    def on_load_checkpoint(self, trainer: TrainerProtocol, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Called when fit resumes from a checkpoint, before the callbacks' states are loaded."""

    def setup(self, trainer: TrainerProtocol, pl_module: LightningModule, stage: str) -> None: ...
    def teardown(self, trainer: TrainerProtocol, pl_module: LightningModule, stage: str) -> None: ...
    def on_fit_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_fit_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_sanity_check_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_sanity_check_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_train_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_train_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_train_epoch_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_train_epoch_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_train_batch_start(self, trainer: TrainerProtocol, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None: ...
    def on_train_batch_end(self, trainer: TrainerProtocol, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None: ...
    def on_before_backward(self, trainer: TrainerProtocol, pl_module: LightningModule, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_before_optimizer_step(self, trainer: TrainerProtocol, pl_module: LightningModule,
                                 optimizer: Any) -> None: ...
    def on_before_zero_grad(self, trainer: TrainerProtocol, pl_module: LightningModule, optimizer: Any) -> None: ...
    def on_validation_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_validation_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_validation_epoch_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_validation_epoch_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_validation_batch_start(self, trainer: TrainerProtocol, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, trainer: TrainerProtocol, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_exception(self, trainer: TrainerProtocol, pl_module: LightningModule, exception: BaseException) -> None: ...


    def on_test_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_test_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_test_epoch_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_test_epoch_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_test_batch_start(self, trainer: TrainerProtocol, pl_module: LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, trainer: TrainerProtocol, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_predict_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_predict_epoch_start(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_predict_epoch_end(self, trainer: TrainerProtocol, pl_module: LightningModule) -> None: ...
    def on_predict_batch_start(self, trainer: TrainerProtocol, pl_module: LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, trainer: TrainerProtocol, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None: ...
