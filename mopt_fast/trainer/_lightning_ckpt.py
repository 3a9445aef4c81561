"""Lightning 2.6's ``"loops"`` checkpoint entry, from our fit loop's state and back.

Lightning's loops record where a fit stands as progress counters (loops/progress.py): per loop
and per batch, how many were ready, started, processed and completed, in ``total`` (over the fit)
and ``current`` (this epoch) halves, plus the optimizer step and zero_grad counts that make the
global step. Its restart logic (FitLoop / _TrainingEpochLoop ``update_restart_stage``) reads the
stage a checkpoint was taken in from how those differ: processed one short of started is inside
an epoch, completed one short of processed is at a batch's ``on_train_batch_end``, and so on.

Our fit loop names that stage directly (`LoopPoint`) and runs Lightning's order, so each of our
points has the counters Lightning's loops hold at the same hook; `lightning_loops` writes those,
and `fit_loop_state` reads a Lightning file's back into our fit loop's state. What Lightning does
not record (the RNG, the batches' data order, persistent-worker state, the logged-metric state)
is left empty in a state read from Lightning: see `FitLoop.continue_epoch` for what a resume does
without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mopt_fast.core.states import LoopPoint

if TYPE_CHECKING:
    from mopt_fast.trainer.fit_loop import FitLoop

__all__ = ["lightning_loops", "fit_loop_state"]


def _counts(keys: tuple[str, ...], *values: int) -> dict[str, int]:
    return dict(zip(keys, values))


_READY_COMPLETED = ("ready", "completed")
_STARTED = ("ready", "started", "completed")
_PROCESSED = ("ready", "started", "processed", "completed")


def _processed(total: tuple[int, int, int, int], current: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    return {"total": _counts(_PROCESSED, *total), "current": _counts(_PROCESSED, *(current or total))}


def _batch_progress(total: tuple[int, int, int, int], current: tuple[int, int, int, int], last: bool) -> dict[str, Any]:
    return {**_processed(total, current), "is_last_batch": last}


def _ready_completed(n: int) -> dict[str, Any]:
    return {"total": _counts(_READY_COMPLETED, n, n), "current": _counts(_READY_COMPLETED, n, n)}


def _eval_loop() -> dict[str, Any]:
    return {"state_dict": {}, "batch_progress": _batch_progress((0,) * 4, (0,) * 4, False)}


def lightning_loops(fit: FitLoop, automatic: bool) -> dict[str, Any]:
    """Lightning's ``"loops"`` entry for our fit loop `fit` where it stands: the counters
    Lightning's loops hold at the hook of the same point, so that Lightning's
    ``Trainer.fit(ckpt_path=...)`` resumes at the same epoch, global step and batch. (The
    ``current`` optimizer counts are given the totals: Lightning resets them per epoch and reads
    only the totals.)"""
    epochs, point = fit.epochs_completed, fit.point
    k, t = fit.batch_idx + 1, fit.total_batch_idx + 1  # batches begun in this (or the last) epoch; in the fit
    if point.inside_epoch:  # at a batch's end (on_train_batch_end) or after its validation run
        epoch = (epochs + 1, epochs + 1, epochs, epochs)
        done = 0 if point == LoopPoint.VALIDATION else 1  # completed is counted after on_train_batch_end
        batch_total, batch_current = (t, t, t, t - done), (k, k, k, k - done)
    elif point.at_epoch_end:  # on_train_epoch_end: processed, not yet completed
        epoch = (epochs + 1, epochs + 1, epochs + 1, epochs)
        batch_total, batch_current = (t,) * 4, (k,) * 4
    else:  # before the fit, between epochs, after it
        epoch = (epochs,) * 4
        batch_total, batch_current = (t,) * 4, (k,) * 4
    steps = fit.auto_steps if automatic else 0
    manual = fit.manual_steps if not automatic else 0
    loader_states = fit.loader_states()
    fit_loop = {
        # Lightning's place for the stateful train loaders' states (read back by resume.restore)
        "state_dict": {"combined_loader": loader_states} if loader_states else {},
        "epoch_loop.state_dict": {"_batches_that_stepped": fit.batches_that_stepped},
        "epoch_loop.batch_progress": _batch_progress(batch_total, batch_current, fit.is_last_batch),
        "epoch_loop.scheduler_progress": _ready_completed(0),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
            "step": _ready_completed(steps),
            "zero_grad": {"total": _counts(_STARTED, steps, steps, steps),
                          "current": _counts(_STARTED, steps, steps, steps)},
        }},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _ready_completed(manual),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": _batch_progress((0,) * 4, (0,) * 4, False),
        "epoch_progress": _processed(epoch),
    }
    return {"fit_loop": fit_loop, "validate_loop": _eval_loop(), "test_loop": _eval_loop(),
            "predict_loop": {"state_dict": {}, "batch_progress": _processed((0,) * 4)}}


def _get(counts: dict[str, Any], *keys: str) -> tuple[int, ...]:
    return tuple(int(counts[k]) for k in keys)


def fit_loop_state(loops: dict[str, Any]) -> dict[str, Any]:
    """Our fit loop's state (`FitLoop.load_state_dict`) from a Lightning checkpoint's ``"loops"``:
    the point from the stage its counters show, the epoch, steps and batch counts from them; no
    RNG or worker state (Lightning records none). KeyError when a counter is missing."""
    fit = loops["fit_loop"]
    ready, started, processed, completed = _get(fit["epoch_progress"]["current"], *_PROCESSED)
    batch = fit["epoch_loop.batch_progress"]
    b_ready, _, b_processed, b_completed = _get(batch["current"], *_PROCESSED)
    t_ready = int(batch["total"]["ready"])
    if processed == started - 1:  # inside an epoch: at a batch's end, or after its validation
        point = LoopPoint.BATCH if b_completed == b_processed - 1 else LoopPoint.VALIDATION
        batch_idx = b_processed - 1
        epochs = completed
    elif completed == processed - 1:  # on_train_epoch_end
        point, batch_idx, epochs = LoopPoint.EPOCH, b_ready - 1, completed
    else:  # between epochs (also on_train_epoch_start: ready one ahead), before the fit or after it
        epochs = completed
        point = LoopPoint.START if epochs == 0 and t_ready == 0 else LoopPoint.BETWEEN_EPOCHS
        batch_idx = b_ready - 1
    optim = fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"]
    manual = fit["epoch_loop.manual_optimization.optim_step_progress"]["total"]
    return {
        "point": point.value, "epochs_completed": epochs,
        "manual_steps": int(manual["completed"]), "auto_steps": int(optim["completed"]),
        "batches_that_stepped": int(fit["epoch_loop.state_dict"].get("_batches_that_stepped", 0)),
        "total_batch_idx": t_ready - 1, "batch_idx": batch_idx, "is_last_batch": bool(batch["is_last_batch"]),
        "epoch_rng": None, "train_workers": None,
    }
