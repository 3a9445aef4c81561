"""BaseFinetuning and BackboneFinetuning: freeze part of a model before training and unfreeze it
into the optimizer later (Lightning 2.6's ``lightning.pytorch.callbacks.finetuning``).

`BaseFinetuning` freezes in `freeze_before_training` (at setup, before ``configure_optimizers``,
so an optimizer built on ``filter(lambda p: p.requires_grad, ...)`` leaves the frozen parameters
out) and, at the start of every training epoch, calls `finetune_function`, which typically
unfreezes modules into a new parameter group (`unfreeze_and_add_param_group`). The groups it adds
are remembered by parameter name and saved with the callback's state: a resumed fit rebuilds the
optimizer's groups before the optimizer's state is loaded into them.

`BackboneFinetuning` is the ready-made schedule for a module with a ``backbone``: frozen until
`unfreeze_backbone_at_epoch`, then trained with its own learning rate, which grows by
`lambda_func` each epoch up to the rest of the model's.
"""
from __future__ import annotations

__all__ = ["BackboneFinetuning", "BaseFinetuning", "multiplicative"]

import logging
import warnings
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import Optimizer

from mopt_fast.callbacks.callback import Callback
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.core.protocol import CallbackTrainer

# Lightning logs BackboneFinetuning's learning rates (verbose=True) from its module's logger.
log = logging.getLogger("mopt_fast.trainer.finetuning")  # under the Trainer's INFO logger (callback.py)

Modules = Module | Iterable[Module | Iterable]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default schedule: the backbone's learning rate doubles every epoch."""
    return 2.0


class BaseFinetuning(Callback):
    """Override `freeze_before_training(pl_module)` (freeze what should not train yet) and
    `finetune_function(pl_module, epoch, optimizer)` (called at each epoch start for every
    optimizer: unfreeze, add parameter groups); the static helpers do the work. Make the
    optimizer take only ``requires_grad`` parameters."""

    def __init__(self) -> None:
        # optimizer index -> its parameter groups, the parameters named (what a resume restores)
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restarting = True
        # the state itself, in checkpoints written before the state had its key (Lightning's compatibility)
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", state_dict)

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        """On a resumed fit: the optimizers get back the parameter groups this callback had added
        (configure_optimizers built them without), before their saved state is loaded."""
        if not self._restarting:
            return
        if self._internal_optimizer_metadata:
            by_name = dict(pl_module.named_parameters())
            for index, optimizer in enumerate(trainer.optimizers):
                groups = self._internal_optimizer_metadata.get(index)
                if groups is not None:
                    optimizer.param_groups = self._apply_mapping_to_param_groups(groups, by_name)
        self._restarting = False

    # -- the helpers a finetune_function uses ---------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Modules) -> list[Module]:
        """The leaf modules of `modules` (a module, a ModuleDict or nested iterables of them), plus
        the parents that hold parameters themselves."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found: Iterable[Module] = [leaf for m in modules for leaf in BaseFinetuning.flatten_modules(m)]
        else:
            found = modules.modules()
        return [m for m in found if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> Generator:
        """The parameters of `modules` whose requires_grad is `requires_grad` (the batch norms'
        left out unless `train_bn`)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            # recurse=False: a parent with parameters of its own is in the list beside its children
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreezes `modules` (batch norms track their running statistics again)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freezes `module`'s own parameters (a batch norm also stops tracking its statistics)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freezes `modules`; with `train_bn` their batch norms stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable) -> list:
        """`params` without those already in one of `optimizer`'s groups (compared by value, as
        Lightning compares them), with Lightning's warning when some were."""
        in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
        kept: list[torch.Tensor] = []
        skipped: list[torch.Tensor] = []
        for param in params:
            (skipped if any(torch.equal(p, param) for p in in_optimizer) else kept).append(param)
        if skipped:
            warnings.warn(
                "The provided params to be frozen already exist within another group of this optimizer."
                " Those parameters will be skipped.\n"
                "HINT: Did you init your optimizer in `configure_optimizer` as such:\n"
                f" {type(optimizer)}(filter(lambda p: p.requires_grad, self.parameters()), ...) ",
                stacklevel=2,
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: Optimizer, lr: float | None = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreezes `modules` and adds their parameters to `optimizer` as a new group, with
        learning rate `lr` (default: the first group's divided by `initial_denom_lr`)."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        new = BaseFinetuning.filter_on_optimizer(optimizer, params)
        if new:
            optimizer.add_param_group({"params": new, "lr": group_lr})

    # -- the hooks ------------------------------------------------------------------------------
    def setup(self, trainer: CallbackTrainer, pl_module: LightningModule, stage: str) -> None:
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        for index, optimizer in enumerate(trainer.optimizers):
            n_groups_before = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, index, n_groups_before, optimizer.param_groups)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Override to add your unfreeze logic."""
        raise NotImplementedError

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        """Override to add your freeze logic."""
        raise NotImplementedError

    # -- the groups by parameter name -------------------------------------------------------------
    @staticmethod
    def _apply_mapping_to_param_groups(param_groups: list[dict[str, Any]], mapping: dict) -> list[dict[str, Any]]:
        """`param_groups` with each parameter replaced by ``mapping[parameter]`` (a tensor by its
        name, or a name by its tensor), the groups' other settings kept."""
        return [{**{k: v for k, v in group.items() if k != "params"}, "params": [mapping[p] for p in group["params"]]}
                for group in param_groups]

    def _store(self, pl_module: LightningModule, index: int, n_groups_before: int,
               groups: list[dict[str, Any]]) -> None:
        """Remembers optimizer `index`'s groups by parameter name: all of them the first time,
        then the groups added since (by finetune_function or by the user)."""
        names = {p: n for n, p in pl_module.named_parameters()}
        if index not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[index] = self._apply_mapping_to_param_groups(groups, names)
        elif n_groups_before != len(groups):
            self._internal_optimizer_metadata[index].extend(
                self._apply_mapping_to_param_groups(groups[n_groups_before:], names))


class BackboneFinetuning(BaseFinetuning):
    """Trains ``pl_module.backbone`` from epoch `unfreeze_backbone_at_epoch` on.

    Args:
        unfreeze_backbone_at_epoch: the epoch the backbone is unfrozen into the (first... every)
            optimizer, as a new parameter group.
        lambda_func: ``epoch -> factor``: the backbone's learning rate is multiplied by
            ``lambda_func(epoch + 1)`` at the start of each later epoch.
        backbone_initial_ratio_lr: the backbone's first learning rate, as a fraction of the first
            group's (unless `backbone_initial_lr`).
        backbone_initial_lr: the backbone's first learning rate.
        should_align: once the backbone's rate would pass the first group's, it follows it.
        initial_denom_lr: passed to `unfreeze_and_add_param_group`.
        train_bn: the backbone's batch norms train while it is frozen.
        verbose: log both learning rates at every epoch start from the unfreezing on (INFO).
        rounding: digits of the logged rates.
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch: int = unfreeze_backbone_at_epoch
        self.lambda_func: Callable = lambda_func
        self.backbone_initial_ratio_lr: float = backbone_initial_ratio_lr
        self.backbone_initial_lr: float | None = backbone_initial_lr
        self.should_align: bool = should_align
        self.initial_denom_lr: float = initial_denom_lr
        self.train_bn: bool = train_bn
        self.verbose: bool = verbose
        self.rounding: int = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: CallbackTrainer, pl_module: LightningModule) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), Module):
            raise MisconfigurationException("The LightningModule should have a nn.Module `backbone` attribute")
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Unfreezes the backbone at `unfreeze_backbone_at_epoch`; after it, moves its rate along
        the schedule (the backbone's group is the optimizer's last)."""
        if epoch < self.unfreeze_backbone_at_epoch:
            return
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (self.backbone_initial_lr if self.backbone_initial_lr is not None
                           else current_lr * self.backbone_initial_ratio_lr)
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, backbone_lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        else:
            # None (a TypeError, as in Lightning) when this fit never unfroze the backbone
            previous: Any = self.previous_backbone_lr
            backbone_lr = self.lambda_func(epoch + 1) * previous
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            log.info(f"Current lr: {round(current_lr, self.rounding)}, "
                     f"Backbone lr: {round(backbone_lr, self.rounding)}")
