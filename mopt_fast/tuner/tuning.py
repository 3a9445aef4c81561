"""`Tuner`: runs the learning-rate finder or the batch-size search as a fit of their own (Lightning's
``lightning.pytorch.tuner.Tuner``). Each adds its callback in front of the Trainer's, runs the fit,
which the callback ends once its search is done, and takes the callback away again: the Trainer,
the module and the data are as before, except the learning rate or batch size found."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mopt_fast.callbacks.batch_size_finder import BatchSizeFinder
from mopt_fast.callbacks.lr_finder import LearningRateFinder, _LRFinder
from mopt_fast.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from mopt_fast.core.datamodule import LightningDataModule
    from mopt_fast.core.module import LightningModule
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["Tuner"]

_Method = Literal["fit", "validate", "test", "predict"]
_METHODS = ("fit", "validate", "test", "predict")


def _check_tuner_configuration(train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit":
        if dataloaders is not None:
            raise MisconfigurationException(
                f"In tuner with method={method!r}, `dataloaders` argument should be None, please consider setting "
                "`train_dataloaders` and `val_dataloaders` instead."
            )
    elif train_dataloaders is not None or val_dataloaders is not None:
        raise MisconfigurationException(
            f"In tuner with `method`={method!r}, `train_dataloaders` and `val_dataloaders` arguments should be None, "
            "please consider setting `dataloaders` instead."
        )


def _check_no_finder(trainer: Trainer, kind: type, name: str) -> None:
    if any(isinstance(cb, kind) for cb in trainer.callbacks):
        raise ValueError(
            f"Trainer is already configured with a `{name}` callback.Please remove it if you want to use the Tuner."
        )


class Tuner:
    """Tunes a module's learning rate or batch size on a `mopt_fast.Trainer`."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def scale_batch_size(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: _Method = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> int | None:
        """The largest batch size that fits, searched as `BatchSizeFinder` does (see there for the
        arguments); the module's (or its hparams', or the data module's) `batch_arg_name` is left at
        it. ``method`` other than "fit" searches inside validate / test / predict (their loaders
        asked for at each size, `dataloaders` given to them never change) and ends there."""
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        trainer = self._trainer
        if getattr(trainer.strategy, "is_distributed", False):
            raise ValueError("Tuning the batch size is currently not supported with distributed strategies.")
        _check_no_finder(trainer, BatchSizeFinder, "BatchSizeFinder")
        assert 0.0 <= margin < 1.0, f"`margin` should be between 0 and 1. Found {margin=}"
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                 batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)
        finder._early_exit = True
        trainer.callbacks = [finder, *trainer.callbacks]
        try:
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            else:
                getattr(trainer, method)(model, dataloaders, datamodule=datamodule)
        finally:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]
        return finder.optimal_batch_size

    def lr_find(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: LightningDataModule | None = None,
        method: _Method = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> _LRFinder | None:
        """The learning-rate range test, as `LearningRateFinder` runs it (see there for the
        arguments): the results (`_LRFinder`: ``results``, ``suggestion()``, ``plot()``), and with
        `update_attr` the suggestion set on the module."""
        if method != "fit":
            raise MisconfigurationException("method='fit' is the only valid configuration to run lr finder.")
        _check_tuner_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        trainer = self._trainer
        _check_no_finder(trainer, LearningRateFinder, "LearningRateFinder")
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        finder._early_exit = True
        trainer.callbacks = [finder, *trainer.callbacks]
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        finally:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]
        return finder.optimal_lr
