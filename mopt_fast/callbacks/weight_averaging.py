"""WeightAveraging and EMAWeightAveraging (Lightning 2.6's ``lightning.pytorch.callbacks.
WeightAveraging`` / ``EMAWeightAveraging``): a `torch.optim.swa_utils.AveragedModel` of the module,
updated after the optimizer steps (or epochs) `should_update` picks.

The averaged weights stand in for the module's during validation (swapped in at the start of each
validation epoch, swapped back at its end) and replace them when training ends. A checkpoint saved
during the fit holds the averaged weights under ``state_dict`` (what a model loaded from it gets),
the module's own under ``current_model_state`` and the AveragedModel's other entries (``n_averaged``)
under ``averaging_state``; resuming from it restores both models.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.core.hooks import ModelHooks

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

__all__ = ["EMAWeightAveraging", "WeightAveraging"]

_MODULE_PREFIX = "module."  # AveragedModel's state_dict keys for the averaged module's entries


def _overrides_configure_model(module: Any) -> bool:
    """The module's class (mopt_fast's or Lightning's LightningModule) defines its own configure_model."""
    for cls in type(module).__mro__:
        if "configure_model" in vars(cls):
            return cls is not ModelHooks and not cls.__module__.startswith(("lightning.", "pytorch_lightning."))
    return False


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Parameters then buffers, in registration order: how the two models' tensors pair up."""
    return itertools.chain(module.parameters(), module.buffers())


class WeightAveraging(Callback):
    """Keeps an `AveragedModel` of the module, updated after every optimizer step by default
    (override `should_update` to pick other steps or epochs).

    Args:
        device: where the AveragedModel lives (default: the module's device).
        use_buffers: also average the buffers (batch-norm statistics); True by default, unlike
            AveragedModel's own default.
        kwargs: AveragedModel's other arguments (``avg_fn``, ``multi_avg_fn``); without either it
            averages equally (stochastic weight averaging).
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 **kwargs: Any) -> None:
        self._device: torch.device | int | None = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update the average after optimizer step `step_idx` (0-based) or at the end of
        epoch `epoch_idx` (one of the two is given): after every step."""
        return step_idx is not None

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        device = self._device or pl_module.device
        if _overrides_configure_model(pl_module):
            # The average must hold every layer, and configure_model may create some.
            warnings.warn(
                "You're using the WeightAveraging callback with a model that overrides the configure_model "
                "callback. WeightAveraging doesn't support sharding model layers, so you may run out of memory.",
                stacklevel=2,
            )
            pl_module.configure_model()
        self._average_model = AveragedModel(model=pl_module, device=device, use_buffers=self._use_buffers,
                                            **self._kwargs)

    def on_train_batch_end(self, trainer: CallbackTrainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Once per optimizer step: with gradient accumulation several batches end on the same step.
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        assert self._average_model is not None
        for average, current in zip(_tensors(self._average_model.module), _tensors(pl_module)):
            current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: CallbackTrainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            rank_zero_info(
                trainer,
                "You're using the WeightAveraging callback, but saving a checkpoint outside the 'fit' stage. The state "
                "of the WeightAveraging callback won't be saved in the checkpoint. If training has finished, the "
                "average model parameters will be saved to the state_dict in the checkpoint.",
            )
            return
        average_state = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len(_MODULE_PREFIX):]: v for k, v in average_state.items()
                                    if k.startswith(_MODULE_PREFIX)}
        checkpoint["averaging_state"] = {k: v for k, v in average_state.items() if not k.startswith(_MODULE_PREFIX)}

    def on_load_checkpoint(self, trainer: CallbackTrainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            warnings.warn(
                "You're using the WeightAveraging callback, but loading a checkpoint outside the 'fit' stage. The "
                "WeightAveraging state cannot be restored. If you're using the checkpoint for prediction or testing, "
                "you can ignore this warning. To disable the warning, remove the WeightAveraging callback.",
                stacklevel=2,
            )
        elif "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            rank_zero_info(trainer, "Found current_model_state in the checkpoint. This will be used to initialize the model.")
            average_state = {_MODULE_PREFIX + k: v for k, v in checkpoint["state_dict"].items()}
            average_state.update(checkpoint["averaging_state"])
            self._average_model.load_state_dict(average_state)
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            warnings.warn(
                "The checkpoint was not created with WeightAveraging. Both the current and the average model will be "
                "initialized with state_dict.",
                stacklevel=2,
            )
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    def _swap_models(self, pl_module: LightningModule) -> None:
        """The averaged and the current values trade places (validation runs on the average)."""
        assert self._average_model is not None
        for average, current in zip(_tensors(self._average_model.module), _tensors(pl_module)):
            kept = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(kept)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights (``decay`` per update), updated every
    `update_every_n_steps` optimizer steps from step `update_starting_at_step` on (None: from the
    first), and at the end of every epoch from `update_starting_at_epoch` on (None: never)."""

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True,
                 decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(device=device, use_buffers=use_buffers, **kwargs, avg_fn=get_ema_avg_fn(decay=decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None and (
            epoch_idx >= self.update_starting_at_epoch)
