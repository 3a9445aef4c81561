"""Checkpoints of a fit and resuming from them exactly.

A checkpoint records where in the loop it was taken (a `LoopPoint`) and the RNG state at the
start of its epoch, so a resumed fit rebuilds the epoch's data order, skips the batches already
done and carries on from there. One limit: a DataLoader with ``persistent_workers=True`` keeps
its worker processes (and the random streams inside them) from epoch to epoch, and a resumed fit
can only start new ones; see `_data.iter_continuing`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mopt_fast.trainer._data import persistent_workers
from mopt_fast.trainer._hooks import call_as_hook
from mopt_fast.trainer._warn import warn
from mopt_fast.trainer.callbacks import load_callback_states, save_callback_states
from mopt_fast.trainer.checkpoint import FORMAT, load_checkpoint, rng_state, set_rng_state
from mopt_fast.trainer.states import LoopPoint
from mopt_fast.trainer.strategies import FSDPStrategy

if TYPE_CHECKING:
    from mopt_fast.module import LightningModule
    from mopt_fast.trainer.fit_loop import FitLoop
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["checkpoint_dict", "continue_epoch", "load_for_resume", "restore", "restore_weights", "select_ckpt_path",
           "warn_if_worker_streams_restart"]


def checkpoint_dict(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint of the current state: model and hyperparameters, and unless `weights_only`
    the optimizers, schedulers, precision plugin, loop position, metrics, RNG and checkpoint
    callbacks; then the module's on_save_checkpoint."""
    if isinstance(trainer.strategy, FSDPStrategy):
        raise NotImplementedError("checkpoints under strategy='fsdp' are not built yet (sharded state)")
    model = trainer.lightning_module
    loop = trainer.fit_loop
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "epoch": loop.epochs_completed,
        "global_step": loop.global_step,
        "state_dict": model.state_dict(),
        **model._checkpoint_hparams(),  # "hyper_parameters" as plain data, and "hparams_name"
    }
    datamodule = trainer.datamodule
    if datamodule is not None:  # its hyperparameters and state also in a weights-only checkpoint, as Lightning's
        if datamodule.hparams:
            ckpt.update(datamodule._checkpoint_hparams())  # as the module's, under the data module's keys
        state = datamodule.state_dict()
        if state:
            ckpt[type(datamodule).__qualname__] = state
    if not weights_only:
        val_loop = trainer.val_loop
        ckpt.update(
            optimizer_states=[o.state_dict() for o in trainer.optimizers],
            lr_schedulers=[c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
            precision=trainer._precision.state_dict(),
            loops={
                "stage": loop.point.value, "epochs_completed": loop.epochs_completed,
                "manual_steps": loop.manual_steps, "auto_steps": loop.auto_steps,
                "batches_that_stepped": loop.batches_that_stepped, "total_batch_idx": loop.total_batch_idx,
                "val_batches_logged": val_loop.batches_logged[0] if val_loop.batches_logged else 0,
                "val_batches_logged_per_loader": list(val_loop.batches_logged), "batch_idx": loop.batch_idx,
                "is_last_batch": loop.is_last_batch, "epoch_rng": loop.epoch_rng,
                "train_workers": loop.train_workers, "val_workers_started": val_loop.workers_started,
            },
            metrics=trainer._metrics.state_dict(),
            rng=rng_state(),
        )
        save_callback_states(trainer, ckpt)  # by state_key, then the callbacks' on_save_checkpoint (callbacks.py)
    call_as_hook(trainer, "on_save_checkpoint", model.on_save_checkpoint, ckpt)
    return ckpt


def select_ckpt_path(trainer: Trainer, ckpt_path: Any, model_provided: bool) -> str | None:
    """The checkpoint file fit/validate/test/predict loads, as Lightning's `_select_ckpt_path`:
    `ckpt_path` ("best", "last" or a path), else the one set with ``trainer.ckpt_path = ...``; for
    validate/test/predict without a model, "best" (with a warning); None: the current weights."""
    fn = trainer.state.fn.value
    if trainer._ckpt_path_user_managed:
        if ckpt_path:
            warn(
                f"`trainer.ckpt_path = {trainer._ckpt_path!r}` was called but then you passed "
                f"`trainer.{fn}(ckpt_path={ckpt_path!r})`. The latter will be loaded.")
            trainer._ckpt_path, trainer._ckpt_path_user_managed = None, False
        else:
            return trainer._ckpt_path
    if ckpt_path is not None:
        ckpt_path = os.fspath(ckpt_path)
    if model_provided and ckpt_path is None:
        return None
    if ckpt_path is None:
        ckpt_path = "best"
        warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call will be "
            f"used. You can pass `.{fn}(ckpt_path='best')` to use the best model or `.{fn}(ckpt_path='last')` to use "
            "the last model. If you pass a value, this warning will be silenced.")
    if ckpt_path == "best":
        callbacks = trainer.checkpoint_callbacks
        if len(callbacks) > 1:
            warn(
                f'`.{fn}(ckpt_path="best")` is called with Trainer configured with multiple `ModelCheckpoint` '
                "callbacks. It will use the best checkpoint path from first checkpoint callback.")
        if not callbacks:
            raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured.')
        best = callbacks[0].best_model_path
        if not best:
            if trainer.fast_dev_run:
                raise ValueError(
                    f'You cannot execute `.{fn}(ckpt_path="best")` with `fast_dev_run=True`. Please pass an exact '
                    f"checkpoint path to `.{fn}(ckpt_path=...)`"
                )
            raise ValueError(
                f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured to save the best model.'
            )
        return best
    if ckpt_path == "last":
        candidates = [
            os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            for cb in trainer.checkpoint_callbacks if cb.dirpath
        ]
        for c in candidates:  # not "no last checkpoint": that would train from scratch
            if os.path.exists(c) and not os.path.isfile(c):
                raise IsADirectoryError(
                    f'.{fn}(ckpt_path="last"): {c!r} is a directory, not a checkpoint file; move it away or '
                    "pass the checkpoint's path"
                )
        # last.ckpt, last-v1.ckpt, ... of every ModelCheckpoint (checkpoint.py); the newest wins
        found = [c for cb in trainer.checkpoint_callbacks for c in cb._find_last_checkpoints(trainer) if os.path.isfile(c)]
        if not found:
            warn(
                f'.{fn}(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will be '
                "loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.")
            return None
        return max(found, key=os.path.getmtime)
    if ckpt_path in ("hpc", "registry") or ckpt_path.startswith("registry:"):
        raise NotImplementedError(f"`.{fn}(ckpt_path={ckpt_path!r})` (SLURM / model registry) is not built")
    return ckpt_path


def load_for_resume(trainer: Trainer, path: str) -> dict[str, Any]:
    """The checkpoint `fit(ckpt_path=...)` resumes from, checked against the optimizers and
    schedulers configured."""
    ckpt = load_checkpoint(path)
    if "loops" not in ckpt:
        raise ValueError(f"{path!r} was saved with weights_only=True: it has no training state to resume from")
    if len(ckpt["optimizer_states"]) != len(trainer.optimizers) or len(ckpt["lr_schedulers"]) != len(
        trainer.lr_scheduler_configs
    ):
        raise ValueError(
            f"{path!r} holds {len(ckpt['optimizer_states'])} optimizer(s) and {len(ckpt['lr_schedulers'])} "
            f"scheduler(s); configure_optimizers gave {len(trainer.optimizers)} and {len(trainer.lr_scheduler_configs)}"
        )
    return ckpt


def restore_weights(trainer: Trainer, path: str) -> None:
    """validate/test/predict(ckpt_path=...): the module's weights (after its on_load_checkpoint), the
    data module's state and every callback's state, as Lightning's `_restore_modules_and_callbacks`."""
    ckpt = load_checkpoint(path)
    model = trainer.lightning_module
    call_as_hook(trainer, "on_load_checkpoint", model.on_load_checkpoint, ckpt)
    model.load_state_dict(ckpt["state_dict"], strict=getattr(model, "strict_loading", True))
    _restore_datamodule(trainer, ckpt)
    load_callback_states(trainer, ckpt)


def _restore_datamodule(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    datamodule = trainer.datamodule
    if datamodule is not None and type(datamodule).__qualname__ in ckpt:
        datamodule.load_state_dict(ckpt[type(datamodule).__qualname__])


def restore(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Everything but the metrics (loaded after the sanity check) and the RNG (set by
    `continue_epoch` once the data order is rebuilt)."""
    model = trainer.lightning_module
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    _restore_datamodule(trainer, ckpt)
    for opt, state in zip(trainer.optimizers, ckpt["optimizer_states"]):
        opt.load_state_dict(state)
    for config, state in zip(trainer.lr_scheduler_configs, ckpt["lr_schedulers"]):
        config.scheduler.load_state_dict(state)
    trainer._precision.load_state_dict(ckpt["precision"])
    loops = ckpt["loops"]
    loop, val_loop = trainer.fit_loop, trainer.val_loop
    loop.epochs_completed = loops["epochs_completed"]
    loop.manual_steps, loop.auto_steps = loops["manual_steps"], loops["auto_steps"]
    loop.batches_that_stepped = loops["batches_that_stepped"]
    loop.total_batch_idx = loops["total_batch_idx"]
    val_loop.batches_logged = list(loops.get("val_batches_logged_per_loader", [loops["val_batches_logged"]]))
    loop.batch_idx, loop.is_last_batch = loops["batch_idx"], loops["is_last_batch"]
    loop.epoch_rng = loops["epoch_rng"]
    loop.train_workers = loops.get("train_workers")
    val_loop.workers_started = bool(loops.get("val_workers_started", False))
    # Were the original run's persistent workers running where this fit goes on? Inside an
    # epoch: if that epoch's iterator continued them; at or after an epoch's end: if any ran.
    point = LoopPoint(loops["stage"])
    if point.inside_epoch:
        loop.resume_train_workers_running = loop.train_workers == "continued"
    else:
        loop.resume_train_workers_running = loop.train_workers is not None and point != LoopPoint.START
    val_loop.resume_workers_running = bool(loops.get("val_workers_started", False))
    load_callback_states(trainer, ckpt)  # on_load_checkpoint, then load_state_dict by state_key (callbacks.py)


def warn_if_worker_streams_restart(trainer: Trainer, ckpt: dict[str, Any], train_loader: Any) -> None:
    """The one part of a resume that is not exact: see `_data.iter_continuing`."""
    restarted = []
    if persistent_workers(train_loader) and trainer.fit_loop.resume_train_workers_running:
        restarted.append("training")
    if trainer.enable_validation and any(persistent_workers(dl) for dl in trainer.val_loop.loaders or ()) and ckpt[
        "loops"
    ].get("val_workers_started"):
        restarted.append("validation")
    if restarted:
        warn(
            f"Resuming with persistent_workers=True on the {' and '.join(restarted)} DataLoader: its worker "
            "processes were running in the interrupted run and start anew here, so random numbers drawn inside "
            "them (e.g. random augmentation in the Dataset) do not continue that run's streams, and the resumed "
            "fit is not exact if the Dataset draws any. What the main process draws still resumes exactly. With "
            "persistent_workers=False the resume is exact.",
            UserWarning)


def continue_epoch(loop: FitLoop, model: LightningModule, loader: Any, ckpt: dict[str, Any]) -> None:
    """Carry on from where the checkpoint was taken: the rest of that batch or epoch."""
    metrics = loop.trainer._metrics
    point = LoopPoint(ckpt["loops"]["stage"])
    if point in (LoopPoint.IN_BATCH, LoopPoint.IN_EPOCH_END):
        warn(
            f"The checkpoint was saved from inside the loop ({point.value}), not at a resume point: the fit "
            "resumes after that batch or epoch, which may repeat or skip hooks run after the save.")
    if point.inside_epoch:
        # Rebuild the epoch's order from the RNG it started with, skip what was done, then take
        # up the RNG where the checkpoint left it.
        loop.set_sampler_epoch(loader)
        set_rng_state(loop.epoch_rng)
        iterator = loop.new_iterator(loader)
        for _ in range(loop.batch_idx + 1):
            next(iterator)
        set_rng_state(ckpt["rng"])
        metrics.active = metrics.train
        loop.run_epoch(model, iterator, resume_tail="validation" if point == LoopPoint.VALIDATION else "batch")
        loop.end_epoch()
    elif point.at_epoch_end:
        set_rng_state(ckpt["rng"])
        metrics.active = metrics.train
        loop.finish_epoch()
    else:  # saved before training started, between epochs, or after it ended
        set_rng_state(ckpt["rng"])
