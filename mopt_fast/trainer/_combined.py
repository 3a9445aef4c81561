"""Several training dataloaders and the `dataloader_iter` step flavor, as Lightning 2.6 runs them.

A train loader that is a collection (a list, tuple or dict of loaders, nested as needed) runs as a
`CombinedLoader` in "max_size_cycle" mode; a CombinedLoader the user made (ours or Lightning's,
recognised without importing Lightning) runs in its own mode. Each inner loader is processed as a
single one would be (distributed sampler, worker checks, overfit_batches) and limited by
limit_train_batches; the epoch's length is the combined one. A single DataLoader does not come
here: the fit loop iterates it directly, with no per-batch cost for these features.

`StepIterator` is what ``training_step(self, dataloader_iter)`` receives (Lightning's
`_DataLoaderIterDataFetcher`): ``next()`` gives ``(batch, batch_idx, dataloader_idx)`` and keeps
the last batch fetched, which the loop's batch hooks are given; it is done once it has given the
epoch's batches.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mopt_fast.core.states import LoopPoint
from mopt_fast.trainer import training_step
from mopt_fast.trainer._data import (
    DataSource,
    add_worker_init_fn,
    check_iterable,
    num_batches,
    persistent_workers,
    start_workers_keeping_rng,
    without_shuffling,
    worker_check,
)
from mopt_fast.trainer._logging import log_to_loggers
from mopt_fast.trainer._warn import warn
from mopt_fast.utilities.combined_loader import CombinedLoader, combined_length, sized_len

if TYPE_CHECKING:
    from mopt_fast.core.module import LightningModule
    from mopt_fast.trainer.fit_loop import FitLoop
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["BatchesOnly", "StepIterator", "check_train_mode", "combined_mode", "is_collection", "prepare_workers",
           "run_iter_epoch", "setup_train_combined", "train_length"]

_TRAIN_MODES = ["min_size", "max_size_cycle", "max_size"]


def combined_mode(obj: Any) -> str | None:
    """The mode of a CombinedLoader (ours, or Lightning's when the script imported it), else None."""
    if isinstance(obj, CombinedLoader):
        return obj.mode
    for package in ("lightning.pytorch.utilities.combined_loader", "pytorch_lightning.utilities.combined_loader"):
        cls = getattr(sys.modules.get(package), "CombinedLoader", None)
        if isinstance(cls, type) and isinstance(obj, cls):
            lightning_loader: Any = obj
            return str(lightning_loader._mode)  # Lightning keeps the mode private
    return None


def is_collection(obj: Any) -> bool:
    """A train loader that runs as a CombinedLoader: a list, tuple or dict of iterables, or one."""
    return isinstance(obj, (list, tuple, dict)) or combined_mode(obj) is not None


def setup_train_combined(trainer: Trainer, loaders: Any, source: DataSource) -> Any:
    """The combined train loader for `loaders` (a collection, or a CombinedLoader): its inner
    loaders processed as Lightning's `_FitLoop.setup_data` does, and limited by
    limit_train_batches."""
    combined = loaders if combined_mode(loaders) is not None else CombinedLoader(loaders, "max_size_cycle")
    flat = list(combined.flattened)
    if trainer.overfit_batches > 0:
        flat = without_shuffling(flat, "train")
    processed = []
    for loader in flat:
        check_iterable(loader, source, "fit")
        if trainer.use_distributed_sampler:
            loader = trainer.strategy.process_loader(loader, shuffle_default=True)
        worker_check(loader, "train_dataloader", trainer.num_devices, trainer.reload_dataloaders_every_n_epochs)
        add_worker_init_fn(loader, trainer.global_rank)
        processed.append(loader)
    combined.flattened = processed
    limits = []
    for loader in processed:
        length = sized_len(loader)
        if length == 0 and trainer.is_global_zero:
            warn(f"Total length of `{type(loader).__name__}` across ranks is zero. Please make sure this was your "
                 "intention.")
        limits.append(num_batches(loader, trainer.limit_train_batches, "train"))
    combined.limits = limits
    return combined


def train_length(combined: Any) -> int | float:
    """The batches of one training epoch over `combined` (inf: an inner loader without a length)."""
    mode = combined_mode(combined)
    assert mode is not None
    return combined_length(mode, list(combined.flattened), combined.limits)


def prepare_workers(combined: Any, resume_running: bool) -> str | None:
    """The single loader's persistent-workers handling (`FitLoop.new_iterator`), per inner loader,
    before the combined ``iter()``: what the epoch's iterator does to the workers (None: no inner
    loader keeps them; "started"; "continued"), and in a resumed fit whose original run had them
    running, each inner loader's workers started first without moving the RNG, so the combined
    ``iter()`` draws the samplers' orders as that run did (`_data.iter_continuing`)."""
    loaders = [dl for dl in combined.flattened if persistent_workers(dl)]
    if not loaders:
        return None
    stopped = [dl for dl in loaders if dl._iterator is None]
    if stopped and resume_running:
        for dl in stopped:
            start_workers_keeping_rng(dl)
        return "continued"
    return "started" if len(stopped) == len(loaders) else "continued"


def check_train_mode(combined: Any) -> None:
    """Lightning's error for a "sequential" CombinedLoader given to fit (raised as its epoch starts)."""
    if combined_mode(combined) == "sequential":
        raise ValueError(
            '`_FitLoop` does not support the `CombinedLoader(mode="sequential")` mode.'
            f" The available modes are: {_TRAIN_MODES}"
        )


class BatchesOnly:
    """A CombinedLoader's iterator giving the batch alone (the loop counts batch_idx itself, as
    Lightning's training loop does)."""

    __slots__ = ("_it",)

    def __init__(self, it: Iterator) -> None:
        self._it = it

    def __iter__(self) -> BatchesOnly:
        return self

    def __next__(self) -> Any:
        return next(self._it)[0]


class StepIterator:
    """``dataloader_iter``: the epoch's ``(batch, batch_idx, dataloader_idx)`` triples, counted
    against `length` (None: until the loader runs out)."""

    def __init__(self, it: Iterator, length: int | float | None) -> None:
        self._it = it
        self.length = None if length is None or length == float("inf") else int(length)
        self.fetched = 0
        self.done = self.length == 0
        self.batch: Any = None
        self.batch_idx = 0
        self.dataloader_idx = 0

    def __iter__(self) -> StepIterator:
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if self.done:
            raise StopIteration
        try:
            batch, batch_idx, dataloader_idx = next(self._it)
        except StopIteration:
            self.done = True
            raise
        self.fetched += 1
        if self.length is not None:
            self.done = self.fetched >= self.length
        self.batch, self.batch_idx, self.dataloader_idx = batch, batch_idx, dataloader_idx
        return batch, batch_idx, dataloader_idx


class _FetchedIdx:
    """The fit loop as the automatic-optimization step sees it in this flavor: Lightning gives the
    optimizer_step / optimizer_zero_grad hooks (and decides zero_grad by) the batch_idx of the last
    batch fetched before the step, not the loop's count; everything else is the loop's."""

    def __init__(self, loop: FitLoop, batch_idx: int) -> None:
        object.__setattr__(self, "_loop", loop)
        object.__setattr__(self, "batch_idx", batch_idx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._loop, name, value)


def run_iter_epoch(loop: FitLoop, model: LightningModule, fetcher: StepIterator, resume_tail: str | None = None) -> None:
    """One epoch of ``training_step(self, dataloader_iter)``, as Lightning's training epoch loop runs
    it with its `_DataLoaderIterDataFetcher`: the step pulls the batches itself (no batch transfer,
    no move to the device); each advance counts one batch; on_train_batch_start is given the last
    batch fetched before the step (None at an epoch's start) and on_train_batch_end the last one
    fetched by it; the epoch ends when the fetcher is done, or at the StopIteration a step lets
    out. A separate loop from `FitLoop.run_epoch`, so that loop pays nothing for this flavor;
    `resume_tail` as there (a resumed fit first finishes the batch its checkpoint was taken in)."""
    trainer = loop.trainer
    if not resume_tail:
        loop.batch_idx = -1
        loop.is_last_batch = False
    automatic = model.automatic_optimization
    metrics = trainer.metric_store
    metrics.active = metrics.train
    step = training_step.run_automatic if automatic else training_step.run_manual
    precision = trainer.precision_plugin
    call = trainer.hooks.call
    max_steps = trainer.max_steps
    if resume_tail:
        loop.batch_tail(automatic, after_validation=resume_tail == "validation")
    while True:
        if (max_steps not in (None, -1) and loop.global_step >= max_steps) or loop.ready_batches_reached() or (
            trainer.should_stop and loop.can_stop_early()
        ):
            break
        batch, batch_idx = fetcher.batch, fetcher.batch_idx
        loop.batch_idx += 1
        loop.total_batch_idx += 1
        loop.point = LoopPoint.IN_BATCH
        loop.is_last_batch = fetcher.done
        metrics.on_batch_start(batch)
        outputs: Any = None
        skip_rest = call("on_train_batch_start", batch, batch_idx) == -1
        if skip_rest:
            loop.is_last_batch = True
        else:
            try:
                step_loop: Any = _FetchedIdx(loop, batch_idx) if automatic else loop  # stands in for the loop
                outputs = step(trainer, step_loop, (fetcher,))
            except StopIteration:  # the step asked for a batch past the last: the epoch is over
                return
            precision.end_iteration()
        if automatic:
            loop.update_schedulers("step", plateau=False)
            if loop.ready_batches_reached():
                loop.update_schedulers("epoch", plateau=False)
        if skip_rest:
            break
        batch, batch_idx = fetcher.batch, fetcher.batch_idx  # what the step fetched
        loop.is_last_batch = fetcher.done
        call("on_train_batch_end", outputs, batch, batch_idx)
        metrics.on_batch_end()
        every = trainer.log_every_n_steps
        if trainer.loggers and every > 0 and not (automatic and loop.should_accumulate()) and (
            (loop.batches_that_stepped + 1) % every == 0 or trainer.should_stop
        ):
            log_to_loggers(trainer, metrics.step_log_metrics())
        loop.loop_point(LoopPoint.BATCH)
        if loop.preemption is not None and (signum := loop.preemption()):
            loop.stop_for_preemption(signum)
        loop.batch_tail(automatic)
