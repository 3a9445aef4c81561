"""The fit loop: epochs of training batches, with validation, scheduler steps, logging and the
checkpoint points in Lightning 2.6's order.

The order of hooks, of data-loader iterator creation (so the global RNG is drawn from in the same
order), of scheduler steps, validation checks and metric bookkeeping is Lightning's
(loops/fit_loop.py and training_epoch_loop.py there), so a module gives the same weights,
global_step and callback_metrics under either Trainer. One batch goes: `FitLoop._run_epoch`
(fetch, on_train_batch_start) → training_step.py (the step and its optimization) → back here
(schedulers, on_train_batch_end, logging, checkpoint point, validation when due).

The loop's position (`point`, a `LoopPoint`) and counters are what a checkpoint records and
resume.py restores.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.trainer import training_step
from mopt_fast.trainer._data import (
    DataSource,
    Lookahead,
    add_worker_init_fn,
    check_iterable,
    iter_continuing,
    move_to_device,
    num_batches,
    persistent_workers,
    without_shuffling,
)
from mopt_fast.trainer._data import set_sampler_epoch as _set_sampler_epoch
from mopt_fast.trainer.checkpoint import rng_state
from mopt_fast.trainer.states import LoopPoint

if TYPE_CHECKING:
    from mopt_fast.module import LightningModule
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["FitLoop"]

_INF = float("inf")


def _max_reached(current: int, maximum: int | None) -> bool:
    return maximum is not None and maximum != -1 and current >= maximum


class FitLoop:
    """The training loop's state and its epochs. Owned by the Trainer (``trainer.fit_loop``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.source = DataSource(None, "train_dataloader")
        self.loader: Any = None  # the train loader of the fit running
        self.validation_enabled = False  # trainer.enable_validation, fixed for the fit
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
        self.val_check_batch: int | float = _INF
        # Persistent DataLoader workers (see _data.iter_continuing): for the current epoch's
        # train iterator, None (no persistent workers), "started" (it started them) or
        # "continued" (it reused running ones); and, in a resumed fit, whether the original run
        # had them running where this one has yet to start them.
        self.train_workers: str | None = None
        self.resume_train_workers_running = False

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
        trainer = self.trainer
        return (
            _max_reached(self.global_step, trainer.max_steps)
            or _max_reached(self.epochs_completed, trainer.max_epochs)
            or (trainer.should_stop and self.can_stop_early())
        )

    def ready_batches_reached(self) -> bool:
        return self.batch_idx + 1 == self.num_training_batches or self.is_last_batch

    def should_accumulate(self) -> bool:
        ready = self.batch_idx + 1
        done = ready % self.trainer.accumulate_grad_batches == 0
        final = ready == self.num_training_batches or self.is_last_batch
        return not done and not final

    # -- set-up ------------------------------------------------------------------------------------
    def setup_data(self) -> None:
        """The train loader, asked for once per fit (Lightning's `_FitLoop.setup_data`)."""
        if self.loader is not None:
            return
        trainer = self.trainer
        loader = self.source.request(trainer)
        if isinstance(loader, Mapping) or (
            isinstance(loader, (list, tuple)) and any(isinstance(x, DataLoader) for x in loader)
        ):
            raise NotImplementedError(
                "several training dataloaders (a list or dict of them, Lightning's CombinedLoader) are not built in "
                "mopt_fast.Trainer: combine them into one DataLoader"
            )
        check_iterable(loader, self.source, "fit")
        if trainer.overfit_batches > 0:
            loader = without_shuffling([loader], "train")[0]
        if trainer.use_distributed_sampler:
            loader = trainer.strategy.process_loader(loader, shuffle_default=True)
        add_worker_init_fn(loader, trainer.global_rank)
        self.loader = loader

    def setup_batches(self, loader: Any) -> None:
        """num_training_batches and val_check_batch for `loader`."""
        trainer = self.trainer
        self.num_training_batches = num_batches(loader, trainer.limit_train_batches, "train")
        if self.num_training_batches == 0:
            return
        interval = trainer.val_check_interval
        if trainer._val_check_time_interval is not None:  # validation every so many seconds
            self.val_check_batch = None
            trainer._train_start_time = trainer._last_val_time = time.monotonic()
        elif isinstance(interval, int):
            self.val_check_batch = interval
            if (self.val_check_batch > self.num_training_batches and trainer.check_val_every_n_epoch is not None
                    and trainer.enable_validation):
                raise ValueError(
                    f"`val_check_interval` ({interval}) must be less than or equal to the number of "
                    f"the training batches ({self.num_training_batches})."
                )
        elif self.num_training_batches == _INF:
            if interval != 1.0:
                raise MisconfigurationException(
                    "With a train loader without a length, `val_check_interval` must be 1.0 or an int"
                )
            self.val_check_batch = _INF
        else:
            self.val_check_batch = max(1, int(self.num_training_batches * interval))

    def new_iterator(self, loader: Any) -> Any:
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
        return it if self.num_training_batches != _INF else Lookahead(it)

    def set_sampler_epoch(self, loader: Any) -> None:
        _set_sampler_epoch(loader, self.epochs_completed)

    # -- the epochs --------------------------------------------------------------------------------
    def run(self, model: LightningModule, resume: dict[str, Any] | None) -> None:
        from mopt_fast.trainer import resume as resuming

        trainer = self.trainer
        self.validation_enabled = trainer.enable_validation
        if trainer.limit_train_batches == 0:
            return
        self.setup_data()
        loader = self.loader
        self.setup_batches(loader)
        if self.num_training_batches == 0:
            return
        # The first epoch's iterator is made before on_train_start, later ones after
        # on_train_epoch_start: the same points as Lightning, so the RNG draws line up.
        first = resume is None
        if first:
            self.epoch_rng = rng_state()
            iterator = self.new_iterator(loader)
            if self.epochs_completed > 0:
                # A new fit on a trainer past its first epoch (not a resume): Lightning makes the
                # epoch's iterator again after on_train_epoch_start (training_epoch_loop.on_run_start),
                # so this one only draws its base seed. Drawing it too keeps the RNG in line.
                first = False
        if self.done():
            return
        if self.should_check_val_epoch():  # the val loaders, asked for now if the sanity check did not
            trainer.val_loop.setup_data()
        if resume is not None:
            resuming.warn_if_worker_streams_restart(trainer, resume, loader)
        trainer._call("on_train_start")
        if resume is not None:
            resuming.continue_epoch(self, model, loader, resume)
        while not self.done():
            self.set_sampler_epoch(loader)
            trainer._call("on_train_epoch_start")
            if not first:
                self.epoch_rng = rng_state()
                iterator = self.new_iterator(loader)
            first = False
            self.run_epoch(model, iterator)
            self.end_epoch()
        self.point = LoopPoint.END
        trainer._call("on_train_end")

    def run_epoch(self, model: LightningModule, iterator: Any, resume_tail: str | None = None) -> None:
        """One epoch's batches; `resume_tail` ("batch" or "validation") first finishes the batch a
        checkpoint was taken in, from that point."""
        trainer = self.trainer
        if not resume_tail:
            self.batch_idx = -1
            self.is_last_batch = False
        automatic = model.automatic_optimization
        metrics = trainer._metrics
        metrics.active = metrics.train
        device = trainer.root_device
        on_cpu = device.type == "cpu"
        step = training_step.run_automatic if automatic else training_step.run_manual
        pass_idx = trainer._takes_batch_idx(model.training_step)
        lookahead = isinstance(iterator, Lookahead)
        precision = trainer._precision
        call = trainer._call
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
            self.is_last_batch = iterator.done if lookahead else self.batch_idx + 1 >= self.num_training_batches
            if not on_cpu:
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
                trainer._log_to_loggers(metrics.step_log_metrics())
            self.loop_point(LoopPoint.BATCH)
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
                trainer._call_module("on_validation_model_zero_grad")
            trainer.val_loop.run()
            trainer.training = True
            trainer._validation_has_run = True
            self.loop_point(LoopPoint.VALIDATION)
        if automatic:
            self.update_schedulers("step", plateau=True)
        if not accumulating:
            self.batches_that_stepped += 1

    def end_epoch(self) -> None:
        trainer = self.trainer
        trainer._metrics.epoch_end_reached()
        self.point = LoopPoint.IN_EPOCH_END
        trainer._call("on_train_epoch_end")
        self.loop_point(LoopPoint.EPOCH)
        self.finish_epoch()
        self.point = LoopPoint.BETWEEN_EPOCHS

    def finish_epoch(self) -> None:
        trainer = self.trainer
        metrics = trainer._metrics
        metrics.active = metrics.train
        metrics.on_epoch_end()
        if trainer.lightning_module.automatic_optimization and self.ready_batches_reached():
            self.update_schedulers("epoch", plateau=True)
        self.batches_that_stepped -= 1
        if trainer.loggers:
            trainer._log_to_loggers(metrics.step_log_metrics())
        metrics.reset_results(metrics.train)
        self.batches_that_stepped += 1
        self.epochs_completed += 1

    def loop_point(self, point: LoopPoint) -> None:
        """The end of a batch (BATCH), of a validation run inside it (VALIDATION), or of an epoch
        after on_train_epoch_end (EPOCH): the places a checkpoint resumes from exactly. A
        checkpoint saved anywhere else records an approximate stage (see resume.py)."""
        self.point = point
        if not self.trainer.fast_dev_run:  # fast_dev_run saves no checkpoints, as Lightning
            for cb in self.trainer.checkpoint_callbacks:
                cb._on_loop_point(self.trainer, point)
        self.point = LoopPoint.IN_EPOCH_END if point is LoopPoint.EPOCH else LoopPoint.IN_BATCH

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
            trainer._call_module("lr_scheduler_step", config.scheduler, monitor_val)

    def should_check_val_epoch(self) -> bool:
        every = self.trainer.check_val_every_n_epoch
        return self.validation_enabled and (every is None or (self.epochs_completed + 1) % every == 0)

    def should_check_val(self) -> bool:
        """Lightning's `_should_check_val_fx`."""
        trainer = self.trainer
        if not self.should_check_val_epoch():
            return False
        infinite = self.val_check_batch == _INF
        if self.is_last_batch and infinite:
            return True
        if trainer.should_stop and self.can_stop_early():
            return True
        interval = trainer._val_check_time_interval
        if interval is not None:
            return time.monotonic() - trainer._last_val_time >= interval
        if isinstance(trainer.limit_train_batches, int) and infinite:
            return (self.batch_idx + 1) % trainer.limit_train_batches == 0
        if not infinite:
            current = self.total_batch_idx if trainer.check_val_every_n_epoch is None else self.batch_idx
            return (current + 1) % self.val_check_batch == 0
        return self.is_last_batch
