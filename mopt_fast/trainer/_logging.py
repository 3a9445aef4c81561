"""What the Trainer sends its loggers: the hyperparameters at the start of a run, and the logged
metrics (read back to the host here only, when a logger takes them)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from mopt_fast.trainer._metrics import to_scalars

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["log_hyperparams_at_start", "log_to_loggers", "start_experiments"]


def start_experiments(trainer: Trainer) -> None:
    """Creates each logger's experiment before the setup hooks, as Lightning's `_call_setup_hook`:
    a logger's run id / version is then known to what reads it during setup (ModelCheckpoint's
    folder ``<save_dir>/<name>/<version>/checkpoints`` for a W&B or MLflow logger). W&B's first (it
    must start before any TensorBoard writer, to sync them)."""
    def not_wandb(logger: object) -> bool:
        return not any(cls.__name__ == "WandbLogger" for cls in type(logger).__mro__)

    for logger in sorted(trainer.loggers, key=not_wandb):
        if hasattr(logger, "experiment"):
            _ = logger.experiment


def log_hyperparams_at_start(trainer: Trainer) -> None:
    """What Lightning's Trainer does with the loggers once on_fit_start has run (and at the start
    of validate/test/predict): each logger gets the initial hyperparameters of the module (when
    `save_hyperparameters` was called with ``logger=True``) and of the data module, merged (the
    same key with different values is Lightning's error), the model for `log_graph`, and a `save`.
    Rank 0 only."""
    if not trainer.loggers or not trainer.is_global_zero:
        return
    module, datamodule = trainer.lightning_module, trainer.datamodule
    assert module is not None  # a run has its module attached
    model_hparams = dict(module.hparams_initial) if getattr(module, "_log_hyperparams", False) else None
    dm_hparams = (dict(datamodule.hparams_initial)
                  if datamodule is not None and getattr(datamodule, "_log_hyperparams", False) else None)
    hparams = None
    if model_hparams is not None and dm_hparams is not None:
        clash = [k for k in model_hparams.keys() & dm_hparams.keys() if k != "_class_path" and (
            type(model_hparams[k]) is not type(dm_hparams[k])
            or (isinstance(model_hparams[k], torch.Tensor) and model_hparams[k] is not dm_hparams[k])
            or (not isinstance(model_hparams[k], torch.Tensor) and model_hparams[k] != dm_hparams[k])
        )]
        if clash:
            raise RuntimeError(
                f"Error while merging hparams: the keys {clash} are present in both the LightningModule's and "
                "LightningDataModule's hparams but have different values."
            )
        hparams = {**model_hparams, **dm_hparams}
    elif model_hparams is not None:
        hparams = model_hparams
    elif dm_hparams is not None:
        hparams = dm_hparams
    if hparams is not None:
        hparams = {k: v for k, v in hparams.items() if k != "_class_path"}
    for lg in trainer.loggers:
        if hparams is not None:
            lg.log_hyperparams(hparams)
        if hasattr(lg, "log_graph"):
            lg.log_graph(module)
        if hasattr(lg, "save"):
            lg.save()



def log_to_loggers(trainer: Trainer, logged: Mapping[str, torch.Tensor], step: int | None = None) -> None:
    """`logged` to every logger on global rank 0, as numbers, at `step`; without one, at the value
    logged as "step" (``self.log("step", x)`` sets the loggers' step, not a metric, as Lightning's
    logger connector), else at the fit loop's logging step with the epoch added."""
    if not logged or not trainer.loggers or not trainer.is_global_zero:
        return
    scalars = to_scalars(logged)
    if step is None:
        step_metric = scalars.pop("step", None)
        if step_metric is not None:
            step = int(step_metric)
        else:
            scalars.setdefault("epoch", trainer.current_epoch)
            step = trainer.fit_loop.batches_that_stepped
    for lg in trainer.loggers:
        lg.log_metrics(scalars, step)
        lg.save()
