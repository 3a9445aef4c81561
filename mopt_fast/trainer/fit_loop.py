"""The fit loop: epochs of training batches, with validation, scheduler steps, logging and the
checkpoint points in Lightning 2.6's order.

The order of hooks, of data-loader iterator creation (so the global RNG is drawn from in the same
order), of scheduler steps, validation checks and metric bookkeeping is Lightning's
(loops/fit_loop.py and training_epoch_loop.py there), so a module gives the same weights,
global_step and callback_metrics under either Trainer. One batch goes: `FitLoop._run_epoch`
(fetch, on_train_batch_start) → training_step.py (the step and its optimization) → back here
(schedulers, on_train_batch_end, logging, checkpoint point, validation when due).

The loop owns its position (`point`, a `LoopPoint`), counters and clocks, and serializes them
itself (`state_dict` / `load_state_dict`); a restored loop's `run` continues the epoch its
checkpoint was taken in (`continue_epoch`).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mopt_fast.callbacks.callback import rank_zero_info
from mopt_fast.callbacks.model_checkpoint import ModelCheckpoint
from mopt_fast.core.states import LoopPoint
from mopt_fast.exceptions import MisconfigurationException, PossibleUserWarning
from mopt_fast.seed import rng_state, set_rng_state
from mopt_fast.trainer import _signals, training_step
from mopt_fast.trainer._combined import (
    BatchesOnly,
    StepIterator,
    check_train_mode,
    is_collection,
    prepare_workers,
    run_iter_epoch,
    setup_train_combined,
    train_length,
)
from mopt_fast.trainer._data import (
    DataSource,
    Lookahead,
    add_worker_init_fn,
    check_iterable,
    is_stateful,
    iter_continuing,
    move_to_device,
    num_batches,
    persistent_workers,
    without_shuffling,
    worker_check,
)
from mopt_fast.trainer._data import set_sampler_epoch as _set_sampler_epoch
from mopt_fast.trainer._hooks import is_param_in_hook_signature, takes_batch_idx
from mopt_fast.trainer._lightning_surface import BatchProgress, EpochLoopView
from mopt_fast.trainer._logging import log_to_loggers
from mopt_fast.trainer._profiling import ProfiledIterator, profiled_batch_step
from mopt_fast.trainer._warn import warn

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["FitLoop"]

_INF = float("inf")


def _max_reached(current: int, maximum: int | None) -> bool:
    return maximum is not None and maximum != -1 and current >= maximum


class FitLoop:
    """The training loop's state and its epochs. Owned by the Trainer (``trainer.fit_loop``)."""

    # Automatic optimization skips zero_grad and backward while set (Lightning's, which its
    # StochasticWeightAveraging sets for the epoch that only updates the batch-norm statistics).
    _skip_backward = False

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.source = DataSource(None, "train_dataloader")
        self.loader: Any = None  # the train loader of the fit running
        self.validation_enabled = False  # trainer.enable_validation, fixed for the fit
        # Validation every so many seconds (a time-based val_check_interval; None: by batches),
        # counted from the end of the last validation run.
        self.val_check_time_interval: float | None = None
        self.last_val_time = 0.0
        self.validation_has_run = False  # in this fit (ModelCheckpoint: a missing monitor is an error after)
        # A resumed fit: the RNG state the checkpoint was taken with, set by `load_state_dict`'s
        # caller; None for a fit from the start.
        self.resume_rng: dict[str, Any] | None = None
        # Decided when the train loader is set up, so the per-batch path never asks: it is a
        # CombinedLoader (several loaders, or training_step takes `dataloader_iter`), and the latter.
        self.combined = False
        self.step_takes_iter = False
        self.last_reload_epoch: float = -_INF  # reload_dataloaders_every_n_epochs counts from here
        # training_step(self, dataloader_iter): the epoch's fetcher (the batches it fetched are what a
        # resume skips: a step may fetch more than one), and that count in a restored state.
        self.iter_fetcher: StepIterator | None = None
        self.resume_iter_fetched: int | None = None
        # Stateful train loaders (see `loader_states`): the states a checkpoint holds for them, put
        # back once the loaders are set up; and whether that was done in this resumed fit (the
        # loaders then carry on from where they were, so the epoch's done batches are not skipped).
        self.loader_states_to_load: list[dict[str, Any]] = []
        self.loader_states_restored = False
        # After each batch of a fit: whether a preemption signal ends it (trainer.preemption_check).
        self.preemption: _signals.PreemptionCheck | None = None
        self.reset_progress()

    def reset_progress(self) -> None:
        """The counters of a fresh Trainer (a checkpoint restores them)."""
        self.epochs_completed = 0
        self.manual_steps = 0  # wrapper steps of every optimizer (manual optimization)
        self.auto_steps = 0  # optimizer_step calls (automatic optimization)
        self.batches_that_stepped = 0  # the loggers' step
        self.total_batch_idx = -1
        self.batch_idx = -1
        self.is_last_batch = False
        self.point = LoopPoint.START
        self.epoch_rng: dict[str, Any] | None = None  # the RNG at the start of the epoch (resume rebuilds its order)
        self.num_training_batches: int | float = _INF
        # The batches the loader gives per epoch (num_training_batches as set up; a callback may
        # raise num_training_batches above it, as Lightning's SWA does through `max_batches`).
        self.loader_batches: int | float = _INF
        self.val_check_batch: int | float | None = _INF  # None: validation by time (val_check_time_interval)
        # Persistent DataLoader workers (see _data.iter_continuing): for the current epoch's
        # train iterator, None (no persistent workers), "started" (it started them) or
        # "continued" (it reused running ones); and, in a resumed fit, whether the original run
        # had them running where this one has yet to start them.
        self.train_workers: str | None = None
        self.resume_train_workers_running = False

    def state_dict(self) -> dict[str, Any]:
        """The loop's position and counters, as plain data: what a checkpoint records."""
        return {
            "point": self.point.value, "epochs_completed": self.epochs_completed, "manual_steps": self.manual_steps,
            "auto_steps": self.auto_steps, "batches_that_stepped": self.batches_that_stepped,
            "total_batch_idx": self.total_batch_idx, "batch_idx": self.batch_idx, "is_last_batch": self.is_last_batch,
            "epoch_rng": self.epoch_rng, "train_workers": self.train_workers,
            "iter_fetched": self.iter_fetcher.fetched if self.iter_fetcher is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Back to where `state_dict` was taken; `run` then resumes from there."""
        self.point = LoopPoint(state["point"])
        self.epochs_completed = state["epochs_completed"]
        self.manual_steps, self.auto_steps = state["manual_steps"], state["auto_steps"]
        self.batches_that_stepped = state["batches_that_stepped"]
        self.total_batch_idx = state["total_batch_idx"]
        self.batch_idx, self.is_last_batch = state["batch_idx"], state["is_last_batch"]
        self.epoch_rng = state["epoch_rng"]
        self.train_workers = state["train_workers"]
        self.resume_iter_fetched = state.get("iter_fetched")
        # Were the original run's persistent workers running where this fit goes on? Inside an
        # epoch: if that epoch's iterator continued them; at or after an epoch's end: if any ran.
        if self.point.inside_epoch:
            self.resume_train_workers_running = self.train_workers == "continued"
        else:
            self.resume_train_workers_running = self.train_workers is not None and self.point != LoopPoint.START

    # -- counters ------------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        module = self.trainer.lightning_module
        if module is not None and not module.automatic_optimization:
            return self.manual_steps
        return self.auto_steps

    def count_manual_step(self) -> None:
        self.manual_steps += 1

    def can_stop_early(self) -> bool:
        """min_epochs and min_steps are met: `trainer.should_stop` may end the fit."""
        trainer = self.trainer
        epochs = self.epochs_completed >= trainer.min_epochs if trainer.min_epochs else True
        steps = self.global_step >= trainer.min_steps if trainer.min_steps else True
        return epochs and steps

    def done(self) -> bool:
        """Whether the fit is over; says why as Lightning's FitLoop.done does (INFO), also when a
        resumed checkpoint is already at max_steps / max_epochs."""
        trainer = self.trainer
        if _max_reached(self.global_step, trainer.max_steps):
            rank_zero_info(trainer, f"`Trainer.fit` stopped: `max_steps={trainer.max_steps!r}` reached.")
            return True
        if _max_reached(self.epochs_completed, trainer.max_epochs):
            rank_zero_info(trainer, f"`Trainer.fit` stopped: `max_epochs={trainer.max_epochs!r}` reached.")
            return True
        return trainer.should_stop and self.can_stop_early()

    def ready_batches_reached(self) -> bool:
        return self.batch_idx + 1 == self.num_training_batches or self.is_last_batch

    def should_accumulate(self) -> bool:
        ready = self.batch_idx + 1
        done = ready % self.trainer.accumulate_grad_batches == 0
        final = ready == self.num_training_batches or self.is_last_batch
        return not done and not final

    # -- Lightning's public loop surface (what Lightning's callbacks read; see _lightning_surface.py) --
    @property
    def epoch_loop(self) -> EpochLoopView:
        """Lightning's training-epoch loop: its counters (``_batches_that_stepped``,
        ``batch_progress``...), read from this loop."""
        return EpochLoopView(self)

    @property
    def max_epochs(self) -> int | None:
        return self.trainer.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int | None) -> None:
        self.trainer.max_epochs = value

    @property
    def max_steps(self) -> int:
        return self.trainer.max_steps

    @max_steps.setter
    def max_steps(self, value: int) -> None:
        self.trainer.max_steps = value

    @property
    def min_epochs(self) -> int | None:
        return self.trainer.min_epochs

    @property
    def min_steps(self) -> int | None:
        return self.trainer.min_steps

    @property
    def max_batches(self) -> int | float:
        """Training batches per epoch (``trainer.num_training_batches``)."""
        return self.num_training_batches

    @max_batches.setter
    def max_batches(self, value: int | float) -> None:
        self.num_training_batches = value

    @property
    def skip_backward(self) -> bool:
        """Automatic optimization skips zero_grad and backward (StochasticWeightAveraging's batch-norm epoch)."""
        return self._skip_backward

    @skip_backward.setter
    def skip_backward(self, value: bool) -> None:
        self._skip_backward = value

    @property
    def epoch_progress(self) -> BatchProgress:
        """Epochs, as Lightning's ``fit_loop.epoch_progress`` counts them (completed ones)."""
        return BatchProgress(self.epochs_completed, self.epochs_completed)

    def _should_accumulate(self) -> bool:
        return self.should_accumulate()

    # -- set-up ------------------------------------------------------------------------------------
    def should_reload(self) -> bool:
        """Lightning's `_should_reload_train_dl`: reload_dataloaders_every_n_epochs epochs since the last request."""
        n = self.trainer.reload_dataloaders_every_n_epochs
        return bool(n) and self.trainer.current_epoch - self.last_reload_epoch >= n

    def reload_if_due(self) -> None:
        """At an epoch's start (Lightning's `on_advance_start`): the train loader asked for again when
        due. Lightning's fetcher makes the new loader's iterator at once and the epoch makes another
        after on_train_epoch_start, so one is made here too: its draws from the RNG line up."""
        if self.loader is None or not self.should_reload():
            return
        self.setup_data()
        self.setup_batches(self.loader)
        self.new_iterator(self.loader)

    def setup_data(self) -> None:
        """The train loader, asked for once per fit and again every reload_dataloaders_every_n_epochs
        (Lightning's `_FitLoop.setup_data`)."""
        if self.loader is not None and not self.should_reload():
            return
        trainer = self.trainer
        loader = self.source.request(trainer)
        model = trainer.lightning_module
        self.step_takes_iter = model is not None and is_param_in_hook_signature(
            model.training_step, "dataloader_iter", explicit=True)
        if self.step_takes_iter:
            warn("Found `dataloader_iter` argument in the `training_step`. Note that the support for this signature is "
                 "experimental and the behavior is subject to change.")
        self.combined = self.step_takes_iter or is_collection(loader)
        self.iter_fetcher = None
        self.last_reload_epoch = trainer.current_epoch
        if self.combined:
            self.loader = setup_train_combined(trainer, loader, self.source)
            return
        check_iterable(loader, self.source, "fit")
        if trainer.overfit_batches > 0:
            loader = without_shuffling([loader], "train")[0]
        if trainer.use_distributed_sampler:
            loader = trainer.strategy.process_loader(loader, shuffle_default=True)
        worker_check(loader, "train_dataloader", trainer.num_devices, trainer.reload_dataloaders_every_n_epochs)
        add_worker_init_fn(loader, trainer.global_rank)
        self.loader = loader

    # -- stateful train loaders ------------------------------------------------------------------
    def loader_states(self) -> list[dict[str, Any]]:
        """The state of each train loader that has one (`_data.is_stateful`), in CombinedLoader
        order: Lightning's ``combined_loader`` entry of its fit loop's state."""
        if self.loader is None:
            return []
        return [dl.state_dict() for dl in (self.loader.flattened if self.combined else (self.loader,))
                if is_stateful(dl)]

    def restore_loader_states(self) -> None:
        """Put the states a checkpoint held back into the stateful train loaders (once, as the
        resumed fit's loaders are set up; Lightning's `_load_combined_loader_states`)."""
        states, self.loader_states_to_load = self.loader_states_to_load, []
        if not states or self.loader is None:
            return
        stateful = [dl for dl in (self.loader.flattened if self.combined else (self.loader,)) if is_stateful(dl)]
        if len(stateful) != len(states):
            raise RuntimeError(  # Lightning's message
                f"The CombinedLoader has {len(stateful)} stateful loaders, but found {len(states)} states"
                " in the checkpoint. Please make sure you define the same dataloaders that were used when saving"
                " the checkpoint."
            )
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)
        self.loader_states_restored = True

    @property
    def dataloaders(self) -> Any:
        """The train loader(s) as given (``trainer.train_dataloader``): a collection in its own
        structure, each loader as processed."""
        return self.loader.iterables if self.combined and self.loader is not None else self.loader

    def setup_batches(self, loader: Any) -> None:
        """num_training_batches and val_check_batch for `loader`."""
        trainer = self.trainer
        if self.combined:
            self.num_training_batches = train_length(loader)
        else:
            self.num_training_batches = num_batches(loader, trainer.limit_train_batches, "train")
        self.loader_batches = self.num_training_batches
        if self.num_training_batches == 0:
            return
        interval = trainer.val_check_interval
        if self.val_check_time_interval is not None:  # validation every so many seconds
            self.val_check_batch = None
            self.last_val_time = time.monotonic()
        elif isinstance(interval, int):
            self.val_check_batch = interval
            if (self.val_check_batch > self.num_training_batches and trainer.check_val_every_n_epoch is not None
                    and trainer.limit_val_batches > 0):
                raise ValueError(  # Lightning's message, leading space included
                    f" `val_check_interval` ({interval}) must be less than or equal"
                    f" to the number of the training batches ({self.num_training_batches})."
                    " If you want to disable validation set `limit_val_batches` to 0.0 instead."
                    " If you want to validate based on the total training batches, set `check_val_every_n_epoch=None`."
                )
        elif self.num_training_batches == _INF:
            if interval != 1.0:
                raise MisconfigurationException(
                    "When using an IterableDataset for `train_dataloader`,"
                    " `Trainer(val_check_interval)` must be time based, `1.0` or an int. An int k specifies"
                    " checking validation every k training batches."
                )
            self.val_check_batch = _INF
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * interval))
        if trainer.loggers and self.num_training_batches < trainer.log_every_n_steps and not trainer.fast_dev_run:
            warn(
                f"The number of training batches ({self.num_training_batches}) is smaller than the logging interval"
                f" Trainer(log_every_n_steps={trainer.log_every_n_steps}). Set a lower value for log_every_n_steps if"
                " you want to see logs for the training epoch.",
                PossibleUserWarning,
            )

    def new_iterator(self, loader: Any) -> Any:
        if self.combined:
            self.train_workers = prepare_workers(loader, self.resume_train_workers_running)
            self.resume_train_workers_running = False  # only the first iterator of a resumed fit
            if self.step_takes_iter:  # no look-ahead: Lightning's fetcher for this flavor has none
                self.iter_fetcher = StepIterator(iter(loader), train_length(loader))
                return self.iter_fetcher
            batches = BatchesOnly(iter(loader))
            return batches if self.num_training_batches != _INF else Lookahead(batches)
        if not persistent_workers(loader):
            self.train_workers = None
            it = iter(loader)
        elif loader._iterator is None and self.resume_train_workers_running:
            self.train_workers = "continued"
            it = iter_continuing(loader)
        else:
            self.train_workers = "started" if loader._iterator is None else "continued"
            it = iter(loader)
        self.resume_train_workers_running = False  # only the first iterator of a resumed fit
        profiler = self.trainer.hooks.profiler
        if profiler is not None:
            it = ProfiledIterator(it, profiler, "[_TrainingEpochLoop].train_dataloader_next")
        return it if self.num_training_batches != _INF else Lookahead(it)

    # -- the finders' trials (callbacks/lr_finder.py, batch_size_finder.py) --------------------------
    # Lightning's fit loop makes the first epoch's iterator when it sets the train loader up; the
    # finders set it up again between their trials (a new batch size). These make that iterator at
    # the same point, so the RNG draws of the trials and of the fit after them line up with Lightning's.
    prepared_iterator: tuple[Any, Any, dict[str, Any]] | None = None  # (loader, iterator, RNG before it)

    def prepare_first_iterator(self) -> None:
        """Set the train loader up and make the first epoch's iterator now; the next `run` on that
        loader starts from it."""
        self.setup_data()
        self.num_training_batches = num_batches(self.loader, self.trainer.limit_train_batches, "train")
        rng = rng_state()
        self.prepared_iterator = (self.loader, self.new_iterator(self.loader), rng)

    def take_prepared_iterator(self, loader: Any) -> Any:
        """The iterator `prepare_first_iterator` made for `loader` (made for it now if none); the
        epoch's RNG is then the one it was made with (what a resume rebuilds the order from)."""
        prepared, self.prepared_iterator = self.prepared_iterator, None
        if prepared is None or prepared[0] is not loader:
            return self.new_iterator(loader)
        _, iterator, self.epoch_rng = prepared
        return iterator if self.num_training_batches != _INF or isinstance(iterator, Lookahead) else Lookahead(iterator)

    def set_sampler_epoch(self, loader: Any) -> None:
        for dl in loader.flattened if self.combined else (loader,):
            _set_sampler_epoch(dl, self.epochs_completed)

    # -- the epochs --------------------------------------------------------------------------------
    def run(self, model: LightningModule) -> None:
        """The fit's epochs; a loop restored with `load_state_dict` (and `resume_rng` set) first
        finishes the batch or epoch its checkpoint was taken in."""
        trainer = self.trainer
        resume_rng, self.resume_rng = self.resume_rng, None
        self.validation_enabled = trainer.enable_validation
        if trainer.limit_train_batches == 0:
            return
        self.setup_data()
        self.loader_states_restored = False
        if self.loader_states_to_load:
            self.restore_loader_states()
        loader = self.loader
        self.setup_batches(loader)
        if self.num_training_batches == 0:
            if trainer.is_global_zero:
                # Lightning's warnings for an empty train loader: the loader's, then the CombinedLoader's
                # it wraps every train loader in.
                for name in ((type(loader).__name__,) if not self.combined else ()) + ("CombinedLoader",):
                    warn(f"Total length of `{name}` across ranks is zero. Please make sure this was your intention.")
            rank_zero_info(trainer, "`Trainer.fit` stopped: No training batches.")
            return
        # The first epoch's iterator is made before on_train_start, later ones after
        # on_train_epoch_start: the same points as Lightning, so the RNG draws line up.
        first = resume_rng is None
        if first:
            self.epoch_rng = rng_state()
            iterator = self.take_prepared_iterator(loader)
            if self.epochs_completed > 0:
                # A new fit on a trainer past its first epoch (not a resume): Lightning makes the
                # epoch's iterator again after on_train_epoch_start (training_epoch_loop.on_run_start),
                # so this one only draws its base seed. Drawing it too keeps the RNG in line.
                first = False
        if self.done():
            return
        if self.should_check_val_epoch() and trainer.val_loop.loaders is None:  # the sanity check did not ask
            trainer.val_loop.setup_data()
        if resume_rng is not None:
            self.warn_if_worker_streams_restart(loader)
        self.preemption = trainer.preemption_check()
        trainer.hooks.call("on_train_start")
        if resume_rng is not None:
            self.continue_epoch(model, loader, resume_rng)
        while not self.done():
            self.reload_if_due()
            loader = self.loader
            self.set_sampler_epoch(loader)
            trainer.hooks.call("on_train_epoch_start")
            trainer.val_loop.batches_total = 0  # Lightning counts the validation batches per training epoch
            if self.combined:
                check_train_mode(loader)
            if not first:
                self.epoch_rng = rng_state()
                iterator = self.new_iterator(loader)
            first = False
            profiler = trainer.hooks.profiler
            with profiler.profile("run_training_epoch") if profiler is not None else contextlib.nullcontext():
                if self.step_takes_iter:
                    run_iter_epoch(self, model, iterator)
                else:
                    self.run_epoch(model, iterator)
            self.end_epoch()
        self.preemption.drain()
        self.preemption = None
        self.point = LoopPoint.END
        trainer.hooks.call("on_train_end")

    def run_epoch(self, model: LightningModule, iterator: Any, resume_tail: str | None = None) -> None:
        """One epoch's batches; `resume_tail` ("batch" or "validation") first finishes the batch a
        checkpoint was taken in, from that point."""
        trainer = self.trainer
        if not resume_tail:
            self.batch_idx = -1
            self.is_last_batch = False
        automatic = model.automatic_optimization
        metrics = trainer.metric_store
        metrics.active = metrics.train
        device = trainer.root_device
        on_cpu = device.type == "cpu"
        transfer = trainer.batch_transfer
        step: Callable[[Trainer, FitLoop, tuple], dict[str, Any]] = (
            training_step.run_automatic if automatic else training_step.run_manual)
        if trainer.hooks.profiler is not None:  # chosen once per epoch: a run without a profiler pays nothing
            step = profiled_batch_step(step, trainer.hooks.profiler, manual=not automatic)
        pass_idx = takes_batch_idx(model.training_step)
        lookahead = isinstance(iterator, Lookahead)
        precision = trainer.precision_plugin
        call = trainer.hooks.call
        stop_check = self.preemption
        last_batch = min(self.num_training_batches, self.loader_batches)  # the loader may run out first
        if resume_tail:
            self.batch_tail(automatic, after_validation=resume_tail == "validation")
        while True:
            if _max_reached(self.global_step, trainer.max_steps) or self.ready_batches_reached() or (
                trainer.should_stop and self.can_stop_early()
            ):
                break
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self.batch_idx += 1
            self.total_batch_idx += 1
            self.point = LoopPoint.IN_BATCH
            self.is_last_batch = iterator.done if lookahead else self.batch_idx + 1 >= last_batch
            if transfer is not None:  # a batch-transfer hook is overridden
                batch = transfer(batch, 0)
            elif not on_cpu:
                batch = move_to_device(batch, device)
            metrics.on_batch_start(batch)
            outputs: Any = None
            skip_rest = False
            if batch is None:
                warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning...", stacklevel=2)
            else:
                response = call("on_train_batch_start", batch, self.batch_idx)
                skip_rest = response == -1
                if skip_rest:
                    self.is_last_batch = True
                else:
                    outputs = step(trainer, self, (batch, self.batch_idx) if pass_idx else (batch,))
                    precision.end_iteration()
            if automatic:
                self.update_schedulers("step", plateau=False)
                if self.ready_batches_reached():
                    self.update_schedulers("epoch", plateau=False)
            if skip_rest:
                break
            call("on_train_batch_end", outputs, batch, self.batch_idx)
            metrics.on_batch_end()
            every = trainer.log_every_n_steps
            if trainer.loggers and every > 0 and not (automatic and self.should_accumulate()) and (
                (self.batches_that_stepped + 1) % every == 0 or trainer.should_stop
            ):
                log_to_loggers(trainer, metrics.step_log_metrics())
            self.loop_point(LoopPoint.BATCH)
            if stop_check is not None and (signum := stop_check()):
                self.stop_for_preemption(signum)
            self.batch_tail(automatic)

    def batch_tail(self, automatic: bool, after_validation: bool = False) -> None:
        """What follows a batch after its checkpoint point: validation when due (then another
        checkpoint point), plateau schedulers, the logging step counter. A resumed fit starts
        here."""
        trainer = self.trainer
        accumulating = self.should_accumulate()
        if not after_validation and self.should_check_val():
            trainer.validating = True
            if not accumulating:  # no gradients kept in memory during validation
                trainer.hooks.call_module("on_validation_model_zero_grad")
            trainer.val_loop.run()
            trainer.training = True
            self.validation_has_run = True
            self.loop_point(LoopPoint.VALIDATION)
        if automatic:
            self.update_schedulers("step", plateau=True)
        if not accumulating:
            self.batches_that_stepped += 1

    def end_epoch(self) -> None:
        trainer = self.trainer
        trainer.metric_store.epoch_end_reached()
        self.point = LoopPoint.IN_EPOCH_END
        trainer.hooks.call("on_train_epoch_end")
        self.loop_point(LoopPoint.EPOCH)
        self.finish_epoch()
        self.point = LoopPoint.BETWEEN_EPOCHS

    def finish_epoch(self) -> None:
        trainer = self.trainer
        metrics = trainer.metric_store
        metrics.active = metrics.train
        metrics.on_epoch_end()
        module = trainer.lightning_module
        assert module is not None  # a fit runs with its module attached
        if module.automatic_optimization and self.ready_batches_reached():
            self.update_schedulers("epoch", plateau=True)
        self.batches_that_stepped -= 1
        if trainer.loggers:
            log_to_loggers(trainer, metrics.step_log_metrics())
        metrics.reset_results(metrics.train)
        self.batches_that_stepped += 1
        self.epochs_completed += 1

    def loop_point(self, point: LoopPoint) -> None:
        """The end of a batch (BATCH), of a validation run inside it (VALIDATION), or of an epoch
        after on_train_epoch_end (EPOCH): the places a checkpoint resumes from exactly. A
        checkpoint saved anywhere else records an approximate stage (see resume.py)."""
        self.point = point
        if not self.trainer.fast_dev_run:  # fast_dev_run saves no checkpoints, as Lightning
            for cb in self.trainer.callbacks:  # mopt_fast's ModelCheckpoints (Lightning's use their hooks)
                if isinstance(cb, ModelCheckpoint):
                    cb._on_loop_point(self.trainer, point)
        self.point = LoopPoint.IN_EPOCH_END if point is LoopPoint.EPOCH else LoopPoint.IN_BATCH

    def stop_for_preemption(self, signum: int) -> None:
        """A preemption signal arrived: the batch has finished; the HPC checkpoint records this
        point (where a resumed fit goes on with the batch's tail), then the fit ends."""
        self.point = LoopPoint.BATCH
        try:
            raise _signals.stop_for_preemption(self.trainer, signum)
        finally:
            self.point = LoopPoint.IN_BATCH
            self.preemption = None

    # -- resuming --------------------------------------------------------------------------------
    def continue_epoch(self, model: LightningModule, loader: Any, rng: dict[str, Any]) -> None:
        """Carry on from where the restored state was taken: the rest of that batch or epoch;
        `rng` is the RNG state then."""
        metrics = self.trainer.metric_store
        point = self.point
        if not rng:  # a Lightning checkpoint: no RNG state, the RNG goes on as it is (Lightning's resume)
            rng = rng_state()
        if point.inside_epoch and self.epoch_rng is None and not self.loader_states_restored:
            warn(
                "Resuming from a checkpoint taken inside an epoch that holds no RNG state (Lightning's): the rest of "
                f"the epoch is a fresh iterator over the train dataloader with its first {self.batch_idx + 1} batches "
                "skipped, the same batches as the interrupted run's only if their order does not depend on the random "
                "state (no shuffling, or a sampler with its own seeded generator). Lightning itself resumes such a "
                "checkpoint with the dataloader from its start.")
        if point in (LoopPoint.IN_BATCH, LoopPoint.IN_EPOCH_END):
            warn(
                f"The checkpoint was saved from inside the loop ({point.value}), not at a resume point: the fit "
                "resumes after that batch or epoch, which may repeat or skip hooks run after the save.")
        if point.inside_epoch:
            # Rebuild the epoch's order from the RNG it started with, skip what was done, then take
            # up the RNG where the checkpoint left it.
            self.set_sampler_epoch(loader)
            set_rng_state(self.epoch_rng if self.epoch_rng is not None else rng)
            iterator = self.new_iterator(loader)
            fetched = self.resume_iter_fetched if self.step_takes_iter else None
            # Restored stateful loaders carry on where they were: nothing to skip (Lightning's resume).
            done = 0 if self.loader_states_restored else self.batch_idx + 1 if fetched is None else fetched
            for _ in range(done):
                next(iterator)
            set_rng_state(rng)
            metrics.active = metrics.train
            tail = "validation" if point == LoopPoint.VALIDATION else "batch"
            if self.step_takes_iter:
                run_iter_epoch(self, model, iterator, resume_tail=tail)
            else:
                self.run_epoch(model, iterator, resume_tail=tail)
            self.end_epoch()
        elif point.at_epoch_end:
            set_rng_state(rng)
            metrics.active = metrics.train
            self.finish_epoch()
        else:  # saved before training started, between epochs, or after it ended
            set_rng_state(rng)

    def warn_if_worker_streams_restart(self, train_loader: Any) -> None:
        """The one part of a resume that is not exact: see `_data.iter_continuing`."""
        trainer = self.trainer
        restarted = []
        train_loaders = train_loader.flattened if self.combined else (train_loader,)
        if any(persistent_workers(dl) for dl in train_loaders) and self.resume_train_workers_running:
            restarted.append("training")
        val_loop = trainer.val_loop
        if trainer.enable_validation and any(persistent_workers(dl) for dl in val_loop.loaders or ()) and (
            val_loop.resume_workers_running
        ):
            restarted.append("validation")
        if restarted:
            warn(
                f"Resuming with persistent_workers=True on the {' and '.join(restarted)} DataLoader: its worker "
                "processes were running in the interrupted run and start anew here, so random numbers drawn inside "
                "them (e.g. random augmentation in the Dataset) do not continue that run's streams, and the resumed "
                "fit is not exact if the Dataset draws any. What the main process draws still resumes exactly. With "
                "persistent_workers=False the resume is exact.",
                UserWarning)

    # -- schedulers and validation checks ----------------------------------------------------------
    def update_schedulers(self, interval: str, plateau: bool) -> None:
        trainer = self.trainer
        configs = trainer.lr_scheduler_configs
        if not configs:
            return
        if interval == "step" and self.should_accumulate():
            return
        for config in configs:
            if plateau != config.reduce_on_plateau or config.interval != interval:
                continue
            idx = (self.batch_idx if interval == "step" else self.epochs_completed) + 1
            if idx % config.frequency != 0:
                continue
            monitor_val = None
            if config.reduce_on_plateau:
                assert config.monitor is not None  # required for ReduceLROnPlateau (configure_optimizers)
                monitor_val = trainer.callback_metrics.get(config.monitor)
                if monitor_val is None:
                    if config.strict:
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. "
                            f"Available metrics are: {list(trainer.callback_metrics)}. Condition can be set using "
                            "`monitor` key in lr scheduler dict"
                        )
                    warnings.warn(
                        f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available but strict "
                        "is set to `False`. Skipping learning rate update.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
            trainer.hooks.call_module("lr_scheduler_step", config.scheduler, monitor_val)

    def should_check_val_epoch(self) -> bool:
        every = self.trainer.check_val_every_n_epoch
        return self.validation_enabled and (every is None or (self.epochs_completed + 1) % every == 0)

    def should_check_val(self) -> bool:
        """Lightning's `_should_check_val_fx`."""
        trainer = self.trainer
        if not self.should_check_val_epoch():
            return False
        infinite = self.val_check_batch == _INF
        if self.is_last_batch and (infinite or self.step_takes_iter):
            return True
        if trainer.should_stop and self.can_stop_early():
            return True
        interval = self.val_check_time_interval
        if interval is not None:
            return time.monotonic() - self.last_val_time >= interval
        if isinstance(trainer.limit_train_batches, int) and infinite:
            return (self.batch_idx + 1) % trainer.limit_train_batches == 0
        if not infinite:
            current = self.total_batch_idx if trainer.check_val_every_n_epoch is None else self.batch_idx
            assert self.val_check_batch is not None  # None only with a time interval, handled above
            return (current + 1) % self.val_check_batch == 0
        return self.is_last_batch
