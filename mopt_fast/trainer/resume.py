"""What a checkpoint of a fit holds, and restoring one (Lightning's checkpoint connector).

A checkpoint has Lightning 2.6's layout (core/saving.py), so Lightning's Trainer resumes ours and
ours resumes Lightning's: `checkpoint_dict` writes Lightning's entries, its ``"loops"`` counters
included (`_lightning_ckpt.lightning_loops`), and our exact-resume state under ``"mopt_fast"``;
`restore` reads that state from our files and, from Lightning's, the position its counters give
(`_lightning_ckpt.fit_loop_state`), without the RNG and data-order state Lightning does not keep.

Each loop serializes itself (`FitLoop.state_dict`: where in the loop the checkpoint was taken, a
`LoopPoint`, and the RNG state at the start of its epoch), so a resumed fit rebuilds the epoch's
data order, skips the batches already done and carries on from there (`FitLoop.continue_epoch`). One limit: a DataLoader with ``persistent_workers=True`` keeps
its worker processes (and the random streams inside them) from epoch to epoch, and a resumed fit
can only start new ones; see `_data.iter_continuing`.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.callback import Callback, rank_zero_info
from mopt_fast.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from mopt_fast.core.hparams import HyperparametersMixin
from mopt_fast.core.saving import FORMAT, LIGHTNING_LAYOUT_VERSION, LIGHTNING_VERSION_KEY, filesystem, is_url
from mopt_fast.core.sharded_checkpoint import META_FILE, is_sharded_checkpoint
from mopt_fast.core.states import TrainerFn
from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.seed import rng_state
from mopt_fast.trainer import _signals
from mopt_fast.trainer._lightning_ckpt import fit_loop_state, lightning_loops
from mopt_fast.trainer._lightning_surface import kind_of
from mopt_fast.trainer._warn import warn
from mopt_fast.trainer.strategies import FSDPStrategy

if TYPE_CHECKING:
    from mopt_fast.precision import Precision
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["checkpoint_dict", "load_callback_states", "load_for_resume", "restore", "restore_weights",
           "save_callback_states", "select_ckpt_path"]


def checkpoint_dict(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint of the current state, in Lightning's layout: model, loops' counters and
    hyperparameters, and unless `weights_only` the callbacks, optimizers, schedulers, loss
    scaler and, under ``"mopt_fast"``, our loops' own state, the metrics and the RNG; then the
    module's on_save_checkpoint."""
    model = trainer.lightning_module
    assert model is not None  # a checkpoint is of a run, which has its module attached
    loop = trainer.fit_loop
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "epoch": loop.epochs_completed,
        "global_step": loop.global_step,
        LIGHTNING_VERSION_KEY: LIGHTNING_LAYOUT_VERSION,
        "state_dict": model.state_dict(),
        "loops": lightning_loops(loop, model.automatic_optimization),
    }
    if not weights_only:
        save_callback_states(trainer, ckpt, on_save=False)  # by state_key; their on_save_checkpoint comes last
        ckpt.update(
            optimizer_states=_optimizer_states(trainer),
            lr_schedulers=[c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        )
        entry = _precision_entry(trainer.precision_plugin)
        if entry:
            ckpt[type(trainer.precision_plugin).__qualname__] = entry
        ckpt["mopt_fast"] = {
            "loops": {"fit_loop": loop.state_dict(), "val_loop": trainer.val_loop.state_dict()},
            "metrics": trainer.metric_store.state_dict(),
            "rng": rng_state(),
        }
    if model.hparams:
        ckpt.update(model._checkpoint_hparams())  # "hyper_parameters" and "hparams_name"
    datamodule = trainer.datamodule
    if datamodule is not None:  # its hyperparameters and state also in a weights-only checkpoint, as Lightning's
        if datamodule.hparams:
            # as the module's, under the data module's keys (called unbound: Lightning's data module has the
            # mixin's attributes but not this method)
            ckpt.update(HyperparametersMixin._checkpoint_hparams(datamodule))
        state = datamodule.state_dict()
        if state:
            ckpt[type(datamodule).__qualname__] = state
    if not weights_only:
        _call_callbacks_on_save(trainer, ckpt)
    trainer.hooks.run_as("on_save_checkpoint", model.on_save_checkpoint, ckpt)
    return ckpt


def _optimizer_states(trainer: Trainer) -> list[dict[str, Any]]:
    """Each optimizer's state_dict; under FSDP, DTensor shards keyed by parameter name (what a
    sharded checkpoint resharded on load needs)."""
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        return [strategy.optimizer_state(o) for o in trainer.optimizers]
    return [o.state_dict() for o in trainer.optimizers]


def _load_module_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """The module's weights from a checkpoint's ``state_dict`` (under FSDP: into its shards)."""
    model = trainer.lightning_module
    assert model is not None  # attached before the checkpoint is restored
    strict = getattr(model, "strict_loading", True)
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        strategy.load_model_state(state, strict)
    else:
        model.load_state_dict(state, strict=strict)


def select_ckpt_path(trainer: Trainer, ckpt_path: Any, model_provided: bool) -> str | None:
    """The checkpoint file fit/validate/test/predict loads, as Lightning's `_select_ckpt_path`:
    `ckpt_path` ("best", "last" or a path); for validate/test/predict without a model, "best" (with a
    warning); None: the current weights. (A path set with ``trainer.ckpt_path = ...`` is the
    Trainer's to choose first.)"""
    assert trainer.state.fn is not None  # set by fit / validate / test / predict before this
    fn = trainer.state.fn.value
    if ckpt_path is not None:
        ckpt_path = os.fspath(ckpt_path)
    # An OnExceptionCheckpoint (ours or Lightning's): a fit without ckpt_path resumes from the newest
    # "last" checkpoint, its on-exception file included (Lightning's rule).
    kinds = kind_of(OnExceptionCheckpoint, "OnExceptionCheckpoint")
    on_exception: list[Any] = [cb for cb in trainer.callbacks if isinstance(cb, kinds)]
    if ckpt_path is None and on_exception and trainer.state.fn == TrainerFn.FITTING:
        ckpt_path = "last"
        warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The last model of the previous `fit` call will be "
            f"used. You can pass `{fn}(ckpt_path='best')` to use the best model or `{fn}(ckpt_path='last')` to use "
            "the last model. If you pass a value, this warning will be silenced.")
    if model_provided and ckpt_path is None:
        return None
    if ckpt_path is None:
        ckpt_path = "best"
        on_exception_tip = (" There is also an on-exception checkpoint available, however it is used by default only"
                            " when fitting." if on_exception else "")
        warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call will be "
            f"used.{on_exception_tip} You can pass `.{fn}(ckpt_path='best')` to use the best model or "
            f"`.{fn}(ckpt_path='last')` to use the last model. If you pass a value, this warning will be silenced.")
    if ckpt_path == "best":
        callbacks = trainer.checkpoint_callbacks
        if len(callbacks) > 1:
            warn(
                f'`.{fn}(ckpt_path="best")` is called with Trainer configured with multiple `ModelCheckpoint` '
                "callbacks. It will use the best checkpoint path from first checkpoint callback.")
        if not callbacks:
            raise ValueError(f'`.{fn}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured.')
        best = getattr(callbacks[0], "best_model_path", None)
        if best is None:  # a checkpoint callback without a best model (Lightning's OnExceptionCheckpoint)
            raise ValueError(
                f"`.{fn}()` found no path for the best weights: {best!r}. Please specify a path for a checkpoint "
                f"`.{fn}(ckpt_path=PATH)`")
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
        model_checkpoints = [cb for cb in trainer.checkpoint_callbacks if hasattr(cb, "_find_last_checkpoints")]
        candidates = [
            os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            for cb in model_checkpoints if cb.dirpath
        ]
        for c in candidates:  # not "no last checkpoint": that would train from scratch
            if filesystem(c).exists(c) and not filesystem(c).isfile(c) and not is_sharded_checkpoint(c):
                raise IsADirectoryError(
                    f'.{fn}(ckpt_path="last"): {c!r} is a directory, not a checkpoint file; move it away or '
                    "pass the checkpoint's path"
                )
        # last.ckpt, last-v1.ckpt, ... of every ModelCheckpoint (callbacks/model_checkpoint.py); the newest wins
        paths = [c for cb in model_checkpoints for c in cb._find_last_checkpoints(trainer)]
        paths += [cb.ckpt_path for cb in on_exception]
        # The checkpoint a preemption signal wrote (trainer/_signals.py): a fit stopped that way goes
        # on from it (Lightning's "last" does not look at HPC checkpoints).
        hpc = _signals.hpc_resume_path(trainer.default_root_dir)
        paths += [hpc] if hpc is not None else []
        found = {c: t for c in paths if (t := _modified(c)) is not None}
        if not found:
            warn(
                f'.{fn}(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will be '
                "loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`.")
            return None
        return max(found, key=found.__getitem__)
    if ckpt_path == "hpc":  # the highest-numbered hpc_ckpt_N.ckpt in default_root_dir (Lightning's)
        hpc = _signals.hpc_resume_path(trainer.default_root_dir)
        if hpc is None:
            raise ValueError(
                f'`.{fn}(ckpt_path="hpc")` is set but no HPC checkpoint was found. Please pass an exact checkpoint '
                f"path to `.{fn}(ckpt_path=...)`")
        return hpc
    if ckpt_path in ("registry",) or ckpt_path.startswith("registry:"):
        raise NotImplementedError(f"`.{fn}(ckpt_path={ckpt_path!r})` (model registry) is not built")
    return ckpt_path


def _modified(path: str) -> float | None:
    """When the checkpoint at `path` (a local file or sharded folder, or a URL) was last written;
    None if there is none."""
    if not is_url(path):
        if is_sharded_checkpoint(path):  # its meta.pt is written last, just before the folder is renamed in
            return os.path.getmtime(os.path.join(path, META_FILE))
        return os.path.getmtime(path) if os.path.isfile(path) else None
    fs = filesystem(path)
    return fs.modified(path).timestamp() if fs.isfile(path) else None


def load_for_resume(trainer: Trainer, path: str, weights_only: bool | None = None) -> dict[str, Any]:
    """The checkpoint `fit(ckpt_path=...)` resumes from (ours or Lightning's), checked against the
    optimizers and schedulers configured and against max_epochs before anything is restored:
    a file that cannot resume changes nothing."""
    rank_zero_info(trainer, f"Restoring states from the checkpoint path at {path}")
    ckpt = trainer.strategy.load_checkpoint(path, weights_only)
    # Lightning's errors for a weights-only file (its loops are there, the optimizers are not)
    if "optimizer_states" not in ckpt:
        raise KeyError(
            "Trying to restore optimizer state but checkpoint contains only the model."
            " This is probably due to `ModelCheckpoint.save_weights_only` being set to `True`."
        )
    if "lr_schedulers" not in ckpt:
        raise KeyError(
            "Trying to restore learning rate scheduler state but checkpoint contains only the model."
            " This is probably due to `ModelCheckpoint.save_weights_only` being set to `True`."
        )
    if len(ckpt["optimizer_states"]) != len(trainer.optimizers) or len(ckpt["lr_schedulers"]) != len(
        trainer.lr_scheduler_configs
    ):
        raise ValueError(
            f"{path!r} holds {len(ckpt['optimizer_states'])} optimizer(s) and {len(ckpt['lr_schedulers'])} "
            f"scheduler(s); configure_optimizers gave {len(trainer.optimizers)} and {len(trainer.lr_scheduler_configs)}"
        )
    epoch = _loop_states(ckpt)[0]["epochs_completed"]
    if trainer.max_epochs not in (-1, None) and epoch > trainer.max_epochs:  # Lightning's restore_loops
        raise MisconfigurationException(
            f"You restored a checkpoint with current_epoch={epoch}, but you have set Trainer(max_epochs={trainer.max_epochs})."
        )
    return ckpt


def _loop_states(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the fit loop's state, the validation loop's or None) of a checkpoint: ours from the
    ``"mopt_fast"`` entry (or, in files before Lightning's layout, from ``"loops"``), or read off
    Lightning's counters."""
    ours = ckpt.get("mopt_fast")
    if ours is not None:
        return ours["loops"]["fit_loop"], ours["loops"]["val_loop"]
    if "format" in ckpt:  # mopt_fast.checkpoint/1 and /2
        loops = ckpt["loops"]
        if "fit_loop" not in loops:
            loops = _loops_of_format_2(loops)
        return loops["fit_loop"], loops["val_loop"]
    return fit_loop_state(ckpt["loops"]), None


def restore_weights(trainer: Trainer, path: str, weights_only: bool | None = None) -> None:
    """validate/test/predict(ckpt_path=...): the module's weights (after its on_load_checkpoint), the
    data module's state and every callback's state, as Lightning's `_restore_modules_and_callbacks`."""
    rank_zero_info(trainer, f"Restoring states from the checkpoint path at {path}")
    ckpt = trainer.strategy.load_checkpoint(path, weights_only)
    model = trainer.lightning_module
    assert model is not None  # attached before the checkpoint is restored
    trainer.hooks.run_as("on_load_checkpoint", model.on_load_checkpoint, ckpt)
    _load_module_state(trainer, ckpt["state_dict"])
    _restore_datamodule(trainer, ckpt)
    load_callback_states(trainer, ckpt)
    rank_zero_info(trainer, f"Loaded model weights from the checkpoint at {path}")


def _restore_datamodule(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    datamodule = trainer.datamodule
    if datamodule is not None and type(datamodule).__qualname__ in ckpt:
        datamodule.load_state_dict(ckpt[type(datamodule).__qualname__])


def _loader_states(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """The stateful train loaders' states: Lightning's ``combined_loader`` entry of its fit loop's
    state (ours write it there too); none in files before Lightning's layout."""
    fit_loop = ckpt.get("loops", {}).get("fit_loop", {})
    state = fit_loop.get("state_dict") if isinstance(fit_loop, dict) else None
    return list(state.get("combined_loader", [])) if isinstance(state, dict) else []


def restore(trainer: Trainer, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """Everything but the metrics (loaded after the sanity check: returned; None for a Lightning
    checkpoint, which has none), the RNG (set by the fit loop once it has rebuilt the epoch's
    data order: `FitLoop.resume_rng`; a Lightning checkpoint has none, and the RNG is left as it
    is, as Lightning leaves it) and the optimizers' and schedulers' states (`restore_optimizers`,
    after on_fit_start)."""
    model = trainer.lightning_module
    assert model is not None  # attached before the checkpoint is restored
    fit_state, val_state = _loop_states(ckpt)
    ours = ckpt.get("mopt_fast", ckpt if "format" in ckpt else {})
    _restore_datamodule(trainer, ckpt)
    trainer.hooks.run_as("on_load_checkpoint", model.on_load_checkpoint, ckpt)
    _load_module_state(trainer, ckpt["state_dict"])
    load_callback_states(trainer, ckpt)  # on_load_checkpoint, then load_state_dict by state_key
    plugin = trainer.precision_plugin
    if type(plugin).__qualname__ in ckpt:
        _load_precision_entry(plugin, ckpt[type(plugin).__qualname__])
    elif "precision" in ckpt:  # files before Lightning's layout
        plugin.load_state_dict(ckpt["precision"])
    trainer.fit_loop.load_state_dict(fit_state)
    # Lightning puts the loaders' states back only where its fit loop restarts: inside an epoch, or
    # in a fit bounded by max_steps (its `restarting`); a checkpoint at an epoch's end starts afresh.
    if trainer.fit_loop.point.inside_epoch or trainer.max_steps != -1:
        trainer.fit_loop.loader_states_to_load = _loader_states(ckpt)
    trainer.fit_loop.resume_rng = ours.get("rng", {})  # {}: no RNG state (Lightning's): left as it is
    if val_state is not None:
        trainer.val_loop.load_state_dict(val_state)
    return ours.get("metrics")


def restore_evaluation(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Inside validate / test / predict (after a batch-size search): the data module's state, the
    module's (after its on_load_checkpoint), the callbacks' and the precision plugin's, in
    Lightning's order; the loops and the RNG are left as they are."""
    model = trainer.lightning_module
    assert model is not None  # attached before the checkpoint is restored
    _restore_datamodule(trainer, ckpt)
    trainer.hooks.run_as("on_load_checkpoint", model.on_load_checkpoint, ckpt)
    _load_module_state(trainer, ckpt["state_dict"])
    load_callback_states(trainer, ckpt)
    plugin = trainer.precision_plugin
    if type(plugin).__qualname__ in ckpt:
        _load_precision_entry(plugin, ckpt[type(plugin).__qualname__])


def _precision_entry(plugin: Precision) -> dict[str, Any]:
    """Lightning's checkpoint entry of a precision plugin (under its class name): the scaler's
    state under 16-mixed, else the plugin's own (a step guard's count), as mopt_fast.lightning's
    plugins write it in Lightning's Trainer; empty: no entry."""
    state = plugin.state_dict()
    return state["scaler"] if "scaler" in state else state  # a disabled scaler's {}: no entry


def _load_precision_entry(plugin: Precision, entry: dict[str, Any]) -> None:
    if plugin.scaler is None:
        plugin.load_state_dict(entry)
    elif "step_guard" not in entry:  # a guard's count (a bf16 run's) is no scaler state
        plugin.load_state_dict({"scaler": entry})


def restore_optimizers(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """The optimizers' and schedulers' states, after on_fit_start as in Lightning: a callback may
    first give an optimizer back the parameter groups it had added (BaseFinetuning), which
    configure_optimizers did not build."""
    strategy = trainer.strategy
    for opt, state in zip(trainer.optimizers, ckpt["optimizer_states"]):
        if isinstance(strategy, FSDPStrategy):
            strategy.load_optimizer_state(opt, state)
        else:
            opt.load_state_dict(state)
    for config, state in zip(trainer.lr_scheduler_configs, ckpt["lr_schedulers"]):
        config.scheduler.load_state_dict(state)
    rank_zero_info(trainer, f"Restored all states from the checkpoint at {trainer.ckpt_path}")


def _loops_of_format_2(flat: dict[str, Any]) -> dict[str, Any]:
    """The loops' states of a checkpoint written before the loops serialized themselves: one flat
    dictionary for both (mopt_fast.checkpoint/2 files up to this change)."""
    fit_keys = ("epochs_completed", "manual_steps", "auto_steps", "batches_that_stepped", "total_batch_idx",
                "batch_idx", "is_last_batch", "epoch_rng")
    fit_loop = {k: flat[k] for k in fit_keys}
    fit_loop.update(point=flat["stage"], train_workers=flat.get("train_workers"))
    val_loop = {"batches_logged": list(flat.get("val_batches_logged_per_loader", [flat["val_batches_logged"]])),
                "workers_started": bool(flat.get("val_workers_started", False))}
    return {"fit_loop": fit_loop, "val_loop": val_loop}


def save_callback_states(trainer: Trainer, checkpoint: dict[str, Any], on_save: bool = True) -> None:
    """``checkpoint["callbacks"]``: each callback's non-empty state_dict under its state_key; then
    (`on_save`) every callback's on_save_checkpoint (Lightning's order)."""
    states = {}
    for cb in trainer.callbacks:
        state = cb.state_dict()
        if state:
            states[cb.state_key] = state
    checkpoint["callbacks"] = states
    if on_save:
        _call_callbacks_on_save(trainer, checkpoint)


def _call_callbacks_on_save(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    profiler = trainer.hooks.profiler
    for cb in trainer.callbacks:
        if profiler is not None:  # a profiled run calls every callback's, as Lightning does
            with profiler.profile(f"[Callback]{cb.state_key}.on_save_checkpoint"):
                cb.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)
        elif _has_hook(cb, "on_save_checkpoint"):
            cb.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)


def _has_hook(callback: Any, name: str) -> bool:
    """`callback` has its own hook `name`: its class's (not mopt_fast's no-op), or one set on the
    instance (a LambdaCallback's)."""
    return name in getattr(callback, "__dict__", {}) or getattr(type(callback), name) is not getattr(Callback, name)


def load_callback_states(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Every callback's on_load_checkpoint, then load_state_dict with its saved state (a copy), as
    Lightning restores callbacks. Checkpoints from before state keys (``ModelCheckpoint[i]``) load too."""
    states = checkpoint.get("callbacks")
    if states is None:
        return
    legacy: dict[int, str] = {}
    n_checkpoints = 0
    for cb in trainer.callbacks:
        if getattr(cb, "_is_model_checkpoint", False):
            legacy[id(cb)] = f"ModelCheckpoint[{n_checkpoints}]"
            n_checkpoints += 1
    current = {legacy[id(cb)] if legacy.get(id(cb)) in states else cb.state_key for cb in trainer.callbacks}
    missing = states.keys() - current
    if missing:
        warnings.warn(
            "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during"
            f" `Trainer` instantiation. Please add the following callbacks: {list(missing)}.",
            stacklevel=4,
        )
    profiler = trainer.hooks.profiler
    for cb in trainer.callbacks:
        if profiler is not None:  # a profiled run calls every callback's, as Lightning does
            with profiler.profile(f"[Callback]{cb.state_key}.on_load_checkpoint"):
                cb.on_load_checkpoint(trainer, trainer.lightning_module, checkpoint)
        elif _has_hook(cb, "on_load_checkpoint"):
            cb.on_load_checkpoint(trainer, trainer.lightning_module, checkpoint)
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(legacy.get(id(cb), "")))
        if state:
            cb.load_state_dict(copy.deepcopy(state))

