"""StochasticWeightAveraging (Lightning 2.6's ``lightning.pytorch.callbacks.StochasticWeightAveraging``):
from epoch `swa_epoch_start` on, the learning rate follows torch's `SWALR` (in place of the module's
scheduler) and a copy of the module averages its weights at the start of every epoch; the average
replaces the module's weights when training ends.

A module with batch-norm layers gets one more epoch after `max_epochs`: the averaged weights go in,
the batch-norm statistics are reset and recomputed over one pass of the training data, without
backward passes or optimizer steps (the fit loop's `skip_backward`, and an accumulation as long as
the epoch).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR

from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.core.optimizer import LRSchedulerConfig
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer, MonitorTrainer

__all__ = ["StochasticWeightAveraging"]

AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]

_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy")  # the average is a full copy of the module


def _check_arguments(swa_epoch_start: Any, swa_lrs: Any, avg_fn: Any, device: Any) -> None:
    """Lightning's argument checks, with its messages."""
    if (isinstance(swa_epoch_start, int) and swa_epoch_start < 1) or (
            isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1):
        raise MisconfigurationException("swa_epoch_start should be a >0 integer or a float between 0 and 1.")
    if not isinstance(swa_lrs, (float, list)) or (isinstance(swa_lrs, float) and swa_lrs <= 0) or (
            isinstance(swa_lrs, list) and not all(lr > 0 and isinstance(lr, float) for lr in swa_lrs)):
        raise MisconfigurationException("The `swa_lrs` should a positive float, or a list of positive floats")
    if avg_fn is not None and not callable(avg_fn):
        raise MisconfigurationException("The `avg_fn` should be callable.")
    if device is not None and not isinstance(device, (torch.device, str)):
        raise MisconfigurationException(f"device is expected to be a torch.device or a str. Found {device}")


class StochasticWeightAveraging(Callback):
    """Stochastic weight averaging over the last epochs of the fit (one optimizer, at most one
    scheduler).

    Args:
        swa_lrs: the SWA learning rate, for every parameter group (a float) or per group (a list).
        swa_epoch_start: the epoch (1-based int) to start from, or a fraction of max_epochs (float).
        annealing_epochs: epochs of SWALR's annealing to `swa_lrs`.
        annealing_strategy: "cos" or "linear" annealing.
        avg_fn: ``avg_fn(averaged, current, n_averaged)`` (default: the equally weighted average).
        device: where the averaged copy lives (None: the module's device).
    """

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: Literal["cos", "linear"] = "cos", avg_fn: AvgFn | None = None,
                 device: torch.device | str | None = torch.device("cpu")) -> None:  # noqa: B008 (Lightning's default)
        _check_arguments(swa_epoch_start, swa_lrs, avg_fn, device)
        self.n_averaged: Tensor | None = None
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or self.avg_fn
        self._device = device
        self._model_contains_batch_norm: bool | None = None
        self._average_model: nn.Module | None = None
        self._initialized = False
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict | None = None  # from a checkpoint, for the scheduler built later
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self.momenta: dict[nn.modules.batchnorm._BatchNorm, float | None] = {}
        self._max_epochs: int = -1
        self._accumulate_grad_batches = 1

    @property
    def swa_start(self) -> int:
        """The first averaged epoch, 0-based (`swa_epoch_start` resolved to an int at fit start)."""
        assert isinstance(self._swa_epoch_start, int)
        return max(self._swa_epoch_start - 1, 0)

    @property
    def swa_end(self) -> int:
        """The last averaged epoch, 0-based (infinite without an epoch limit)."""
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1  # type: ignore[return-value]

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules())

    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        if type(trainer.strategy).__name__ in _SHARDED_STRATEGIES:
            raise MisconfigurationException("SWA does not currently support sharded models.")
        # A copy taken before any checkpoint is restored: load_state_dict fills it.
        self._average_model = deepcopy(pl_module)

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException("SWA currently works with 1 `optimizer`.")
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException("SWA currently not supported for more than 1 `lr_scheduler`.")
        max_epochs = trainer.max_epochs
        assert max_epochs is not None
        if isinstance(self._swa_epoch_start, float):
            if max_epochs == -1:
                raise MisconfigurationException(
                    "SWA with `swa_epoch_start` as a float is not supported when `max_epochs=-1`. "
                    "Please provide `swa_epoch_start` as an integer."
                )
            self._swa_epoch_start = int(max_epochs * self._swa_epoch_start)
        self._model_contains_batch_norm = self.pl_module_contains_batch_norm(pl_module)
        self._max_epochs = max_epochs
        if self._model_contains_batch_norm and max_epochs != -1:
            trainer.fit_loop.max_epochs = max_epochs + 1  # the batch-norm epoch
        if self._scheduler_state is not None:
            # Resumed inside the SWA phase: the module's scheduler (restored) gives way to SWALR,
            # built again from the checkpoint's state in on_train_epoch_start.
            if trainer.lr_scheduler_configs:
                assert len(trainer.lr_scheduler_configs) == 1
                trainer.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        in_swa = self.swa_start <= epoch <= self.swa_end
        if not self._initialized and in_swa:
            self._initialized = True
            self._start_swa(trainer, pl_module)
        if in_swa and epoch > self._latest_update_epoch:
            assert self.n_averaged is not None and self._average_model is not None
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch
        if self._max_epochs != -1 and epoch == self.swa_end + 1:
            self._start_batch_norm_epoch(trainer, pl_module)

    def _start_swa(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        """The averaged copy to its device, SWALR in place of the module's scheduler."""
        assert self._average_model is not None
        self._average_model = self._average_model.to(self._device or pl_module.device)
        optimizer = trainer.optimizers[0]
        if isinstance(self._swa_lrs, float):
            self._swa_lrs = [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(self._swa_lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        assert trainer.max_epochs is not None
        self._swa_scheduler = SWALR(optimizer, swa_lr=self._swa_lrs,  # type: ignore[arg-type]
                                    anneal_epochs=self._annealing_epochs, anneal_strategy=self._annealing_strategy,
                                    last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif trainer.current_epoch != self.swa_start:
            warnings.warn("SWA is initializing after swa_start without any checkpoint data. "
                          "This may be caused by loading a checkpoint from an older version of PyTorch Lightning.",
                          stacklevel=2)
        config = LRSchedulerConfig(self._swa_scheduler)  # stepped every epoch
        if trainer.lr_scheduler_configs:
            current = trainer.lr_scheduler_configs[0]
            if current.interval != "epoch" or current.frequency != 1:
                warnings.warn(f"SWA is currently only supported every epoch. Found {current}", stacklevel=2)
            rank_zero_info(trainer, f"Swapping scheduler `{current.scheduler.__class__.__name__}`"
                                    f" for `{self._swa_scheduler.__class__.__name__}`")
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=pl_module.device)

    def _start_batch_norm_epoch(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        """The epoch after the last averaged one (only a module with batch norm has it): the average
        goes in and the epoch only recomputes the batch-norm statistics."""
        assert self._average_model is not None
        self.transfer_weights(self._average_model, pl_module)
        self.reset_batch_norm_and_save_state(pl_module)
        loop = trainer.fit_loop
        loop.max_batches += 1
        loop.skip_backward = True
        self._accumulate_grad_batches = trainer.accumulate_grad_batches
        assert isinstance(loop.max_batches, int), "Iterable-style datasets are not supported"
        trainer.accumulate_grad_batches = loop.max_batches  # no optimizer step within the epoch

    def on_train_epoch_end(self, trainer: CallbackTrainer, *args: Any) -> None:
        trainer.fit_loop.skip_backward = False

    def on_train_end(self, trainer: MonitorTrainer, pl_module: LightningModule) -> None:
        finished_epoch = trainer.current_epoch - 1
        if self._model_contains_batch_norm and self._max_epochs != -1 and finished_epoch == self.swa_end + 1:
            # After the batch-norm epoch: the Trainer's settings back as they were.
            trainer.accumulate_grad_batches = self._accumulate_grad_batches
            loop = trainer.fit_loop
            loop.max_batches -= 1
            assert loop.max_epochs is not None
            loop.max_epochs -= 1
            self.reset_momenta()
        elif (finished_epoch == self.swa_end or self._max_epochs == -1) and self._average_model is not None:
            self.transfer_weights(self._average_model, pl_module)

    @staticmethod
    def transfer_weights(src_pl_module: nn.Module, dst_pl_module: nn.Module) -> None:
        for src, dst in zip(src_pl_module.parameters(), dst_pl_module.parameters()):
            dst.detach().copy_(src.to(dst.device))

    def reset_batch_norm_and_save_state(self, pl_module: LightningModule) -> None:
        """Fresh batch-norm statistics, accumulated as a plain average (momentum None) over the
        batch-norm epoch; the momenta are kept for `reset_momenta`."""
        self.momenta = {}
        for module in pl_module.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean = torch.zeros_like(module.running_mean, device=pl_module.device,
                                                   dtype=module.running_mean.dtype)
            module.running_var = torch.ones_like(module.running_var, device=pl_module.device,
                                                 dtype=module.running_var.dtype)
            self.momenta[module] = module.momentum
            module.momentum = None
            assert module.num_batches_tracked is not None
            module.num_batches_tracked *= 0

    def reset_momenta(self) -> None:
        for module, momentum in self.momenta.items():
            module.momentum = momentum

    @staticmethod
    def update_parameters(average_model: nn.Module, model: nn.Module, n_averaged: Tensor, avg_fn: AvgFn) -> None:
        """The average takes in the module's current parameters (the first time: a copy of them)."""
        for p_average, p_model in zip(average_model.parameters(), model.parameters()):
            device = p_average.device
            average, current = p_average.detach(), p_model.detach().to(device)
            p_average.detach().copy_(current if n_averaged == 0 else avg_fn(average, current, n_averaged.to(device)))
        n_averaged += 1

    @staticmethod
    def avg_fn(averaged_model_parameter: Tensor, model_parameter: Tensor, num_averaged: Tensor) -> Tensor:
        """The equally weighted running average."""
        return averaged_model_parameter + (model_parameter - averaged_model_parameter) / (num_averaged + 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else self.n_averaged.item(),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        if self._average_model is not None:
            self._average_model.load_state_dict(state_dict["average_model_state"])
