"""Data-loader plumbing shared by the loops: batch counts under the limit_*_batches flags, moving
batches to the device, finding an epoch's last batch in a loader without a length, persistent
DataLoader workers across a resume, and RNG isolation for the sanity check."""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, SequentialSampler

from mopt_fast.core.datamodule import datamodule_base
from mopt_fast.core.hooks import BATCH_TRANSFER_HOOKS
from mopt_fast.core.hooks import move_data_to_device as move_to_device
from mopt_fast.core.module import LightningModule
from mopt_fast.exceptions import MisconfigurationException, PossibleUserWarning
from mopt_fast.seed import pl_worker_init_function, rng_state, set_rng_state
from mopt_fast.trainer._hooks import is_overridden
from mopt_fast.trainer._warn import warn
from mopt_fast.utilities.combined_loader import flatten_iterables

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

__all__ = ["DataSource", "Lookahead", "add_worker_init_fn", "batch_hook_owner", "batch_transfer", "check_iterable", "flatten_loaders", "isolated_rng",
           "is_stateful", "iter_continuing", "move_to_device", "num_batches", "persistent_workers", "set_sampler_epoch",
           "shut_down_workers", "start_workers_keeping_rng", "with_sampler"]


def num_batches(loader: Any, limit: int | float, prefix: str = "train") -> int | float:
    """The batches one pass over `loader` gives under a limit_*_batches value (inf: no length);
    Lightning's `_parse_num_batches`. `prefix`: "train", "val", "test" or "predict"."""
    try:
        length: int | float = len(loader)
    except (TypeError, NotImplementedError):
        length = float("inf")
    if length == 0:
        return 0
    n = length
    if isinstance(limit, int):
        n = min(length, limit)
    elif isinstance(limit, float) and length != float("inf"):
        n = int(length * limit)
    elif limit != 1.0:
        raise MisconfigurationException(
            f"When using an `IterableDataset`, `Trainer(limit_{prefix}_batches)` must be `1.0` or an int. An int "
            f"specifies `num_{prefix}_batches` to use."
        )
    if n == 0 and limit > 0.0 and isinstance(limit, float) and length != float("inf"):
        raise MisconfigurationException(
            f"You requested to check {limit} of the `{prefix}_dataloader` but {limit} * {length} < 1. Please increase "
            f"the `limit_{prefix}_batches` argument. Try at least `limit_{prefix}_batches={1.0 / length}`"
        )
    return n


class DataSource:
    """Where a loop's dataloaders come from, as Lightning's `_DataLoaderSource`: the loaders given
    to fit/validate/test/predict, or the `name` hook ("val_dataloader", ...) of the module or
    data module `instance`."""

    __slots__ = ("instance", "name")

    def __init__(self, instance: Any, name: str) -> None:
        self.instance = instance
        self.name = name

    def _base(self) -> type | None:
        """The module's base class (ours, or Lightning's data module), None for given loaders."""
        if isinstance(self.instance, LightningModule):
            return LightningModule
        return datamodule_base(self.instance)

    def is_module(self) -> bool:
        return self._base() is not None

    def is_defined(self) -> bool:
        """A loader was given, or the module's hook is overridden."""
        base = self._base()
        if base is None:
            return self.instance is not None
        return is_overridden(self.name, self.instance, base)

    def request(self, trainer: Trainer) -> Any:
        loaders = self.instance
        if self.is_module():
            loaders = trainer.hooks.run_as(self.name, getattr(self.instance, self.name))
        return loaders


def flatten_loaders(loaders: Any) -> list[Any]:
    """The dataloaders of a collection (a list, tuple or dict of loaders, nested), in the order
    CombinedLoader flattens them; a single loader as a list of one."""
    return flatten_iterables(loaders)[0]


def check_iterable(loader: Any, source: DataSource, fn: str) -> None:
    """Lightning's `_check_dataloader_iterable`: a TypeError naming where the non-iterable came from."""
    if isinstance(loader, DataLoader):
        return
    try:
        iter(loader)
    except TypeError:
        prefix = "train_" if fn == "fit" else ""
        if not source.is_module():
            raise TypeError(
                f"An invalid dataloader was passed to `Trainer.{fn}({prefix}dataloaders=...)`. Found {loader}."
            ) from None
        if not source.is_defined():
            raise TypeError(
                f"An invalid dataloader was passed to `Trainer.{fn}({prefix}dataloaders=...)`. Found {loader}. Either "
                f"pass the dataloader to the `.{fn}()` method OR implement `def {source.name}(self):` in your "
                "LightningModule/LightningDataModule."
            ) from None
        raise TypeError(
            f"An invalid dataloader was returned from `{type(source.instance).__name__}.{source.name}()`. "
            f"Found {loader}."
        ) from None


def without_shuffling(loaders: list[Any], prefix: str) -> list[Any]:
    """overfit_batches: the same batches every epoch. Loaders that do not all sample in order are
    rebuilt with a SequentialSampler, with Lightning's warning (`_resolve_overfit_batches`)."""
    if all(isinstance(getattr(dl, "sampler", None), SequentialSampler) for dl in loaders if hasattr(dl, "sampler")):
        return loaders

    warn(f"You requested to overfit but enabled {prefix} dataloader shuffling. We are turning off the {prefix} "
         "dataloader shuffling for you.")
    # torch's Dataset declares no __len__, which SequentialSampler's typing asks for (a map-style one has it)
    return [with_sampler(dl, SequentialSampler(dl.dataset))  # type: ignore[arg-type]
            if isinstance(dl, DataLoader) else dl for dl in loaders]


def with_sampler(loader: DataLoader, sampler: Any) -> DataLoader:
    """A copy of `loader` drawing from `sampler`, with every other setting kept."""
    workers = {}
    if loader.num_workers > 0:
        workers = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                       multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator, **workers,
    )


def suggested_max_num_workers(local_world_size: int) -> int:
    """Lightning's suggestion for `num_workers`: the CPUs this process may use, per local process,
    less one for the main process (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)


def worker_check(loader: Any, name: str, local_world_size: int, reload_every_n_epochs: int) -> None:
    """Lightning's `_worker_check` warnings for a DataLoader about to be used as `name`
    ("train_dataloader", "val_dataloader", ...): workers started by spawn without being kept,
    fewer workers than the machine suggests, pinned persistent workers with reloading."""
    if not isinstance(loader, DataLoader):
        return
    upper_bound = suggested_max_num_workers(local_world_size)
    context = loader.multiprocessing_context
    start_method = context.get_start_method() if context is not None else mp.get_start_method()
    if loader.num_workers > 0 and start_method == "spawn" and not loader.persistent_workers:
        warn(f"Consider setting `persistent_workers=True` in '{name}' to speed up the dataloader worker initialization.")
    elif loader.num_workers < 2 and upper_bound > 1:
        warn(
            f"The '{name}' does not have many workers which may be a bottleneck. Consider increasing the value of the"
            f" `num_workers` argument` to `num_workers={upper_bound}` in the `DataLoader` to improve performance.",
            PossibleUserWarning,
        )
    if loader.persistent_workers and loader.pin_memory and reload_every_n_epochs > 0:
        warn(
            "The combination of `DataLoader(`pin_memory=True`, `persistent_workers=True`) and `Trainer("
            "reload_dataloaders_every_n_epochs > 0)` can lead to instability due to limitations in PyTorch"
            " (https://github.com/pytorch/pytorch/issues/91252). We recommend setting `pin_memory=False` in this case.",
            PossibleUserWarning,
        )


def add_worker_init_fn(loader: Any, rank: int) -> None:
    """After ``seed_everything(workers=True)`` (PL_SEED_WORKERS=1), a DataLoader without a
    worker_init_fn gets `mopt_fast.seed.pl_worker_init_function`, as Lightning's
    `_auto_add_worker_init_fn`."""
    if not hasattr(loader, "worker_init_fn") or loader.worker_init_fn is not None:
        return
    if not int(os.environ.get("PL_SEED_WORKERS", 0)):
        return
    loader.worker_init_fn = functools.partial(pl_worker_init_function, rank=rank)


def batch_hook_owner(trainer: Trainer, name: str) -> Any:
    """Whose batch-transfer hook `name` runs: the data module's when it overrides it, else the
    module's, with Lightning's warning when both do or when a data module is attached and only the
    module does (Lightning's `_DataHookSelector.get_instance`)."""
    model, datamodule = trainer.lightning_module, trainer.datamodule
    if datamodule is None:
        return model
    base = datamodule_base(datamodule)
    in_model = is_overridden(name, model, LightningModule)
    if base is not None and is_overridden(name, datamodule, base):
        if in_model:
            warn(f"You have overridden `{name}` in both `LightningModule` and `LightningDataModule`. It will use the "
                 "implementation from `LightningDataModule` instance.")
        return datamodule
    if in_model:
        warn(f"You have overridden `{name}` in `LightningModule` but have passed in a `LightningDataModule`. It will "
             "use the implementation from `LightningModule` instance.")
    return model


def batch_transfer(trainer: Trainer) -> Callable[[Any, int], Any] | None:
    """The loops' ``batch -> batch`` step for a run in which the module or the data module overrides
    a batch-transfer hook: `on_before_batch_transfer`, `transfer_batch_to_device` (to the root
    device), `on_after_batch_transfer`, each of the owner `batch_hook_owner` picks, run as that hook
    (``self.log`` in it is Lightning's error); under "16-true", "bf16-true" or "64-true" the
    precision's cast of the batch comes first, as in Lightning's loops. None when there is nothing
    to do but move the batch: the loops then move it themselves (nothing on the CPU), with no call
    per batch."""
    model, datamodule = trainer.lightning_module, trainer.datamodule
    base = datamodule_base(datamodule)
    precision = trainer.precision_plugin
    device = trainer.root_device
    if trainer.hooks.profiler is None and not any(is_overridden(name, model, LightningModule)
               or (base is not None and is_overridden(name, datamodule, base)) for name in BATCH_TRANSFER_HOOKS):
        if precision.module_dtype is None:
            return None
        return lambda batch, dataloader_idx: move_to_device(precision.convert_input(batch), device)
    before, move, after = (getattr(batch_hook_owner(trainer, name), name) for name in BATCH_TRANSFER_HOOKS)
    run_as = trainer.hooks.run_as
    convert = precision.convert_input

    def transfer(batch: Any, dataloader_idx: int) -> Any:
        batch = run_as("on_before_batch_transfer", before, convert(batch), dataloader_idx)
        batch = run_as("transfer_batch_to_device", move, batch, device, dataloader_idx)
        return run_as("on_after_batch_transfer", after, batch, dataloader_idx)

    return transfer


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class Lookahead:
    """An iterator that knows whether the batch it just gave was the last (for loaders without
    a length)."""

    def __init__(self, it: Iterator) -> None:
        self._it = it
        self._next: Any = None
        self.done = False
        self._advance()

    def _advance(self) -> None:
        try:
            self._next = next(self._it)
        except StopIteration:
            self.done = True

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        item = self._next
        self._advance()
        return item


def is_stateful(loader: Any) -> bool:
    """A loader that saves and restores its position (torchdata's StatefulDataLoader, or any with
    ``state_dict`` / ``load_state_dict``: Lightning's `_Stateful` protocol)."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


def persistent_workers(loader: Any) -> bool:
    return isinstance(loader, DataLoader) and loader.num_workers > 0 and loader.persistent_workers


def shut_down_workers(loader: Any) -> None:
    if isinstance(getattr(loader, "flattened", None), list):  # a CombinedLoader: each of its loaders
        for inner in loader.flattened:
            shut_down_workers(inner)
        return
    iterator = getattr(loader, "_iterator", None) if isinstance(loader, DataLoader) else None
    if iterator is not None:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def iter_continuing(loader: DataLoader) -> Iterator:
    """``iter(loader)`` as the run being resumed did it, for a loader with persistent workers
    that were already running there but are not yet started in this process.

    There, iter() only restarted the sampler on the running workers (`_reset`: the sampler's
    draw from the RNG). Here the first iter() must start the workers, which also draws their base
    seed from the RNG (the global one, or the loader's generator) before the sampler draws: the
    epoch's order and every later draw would shift. So start the workers, put the RNG back, and
    restart the sampler as the original did. What this cannot restore is the workers' own RNG
    streams (seeded from that base seed when they started, then advanced by every sample they
    loaded): they live in the original run's worker processes. The Trainer warns about that."""
    start_workers_keeping_rng(loader)
    return iter(loader)


def start_workers_keeping_rng(loader: DataLoader) -> None:
    """Start `loader`'s persistent workers without moving any RNG: its next ``iter()`` then only
    restarts the sampler on them, as in a run where they were already running (`iter_continuing`;
    a CombinedLoader's loaders get this each before the combined ``iter()``)."""
    state = rng_state()
    generator = loader.generator.get_state() if loader.generator is not None else None
    iter(loader)  # starts the workers
    set_rng_state(state)
    if generator is not None:
        loader.generator.set_state(generator)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restores every global RNG afterwards (the sanity check must not change training)."""
    states: list[tuple[Callable, Any]] = [(torch.set_rng_state, torch.get_rng_state()),
                                          (random.setstate, random.getstate())]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.append((torch.cuda.set_rng_state_all, torch.cuda.get_rng_state_all()))
    try:
        import numpy

        states.append((numpy.random.set_state, numpy.random.get_state()))
    except ImportError:  # numpy is optional
        pass
    try:
        yield
    finally:
        for setter, state in states:
            setter(state)
