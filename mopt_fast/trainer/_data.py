"""Data-loader plumbing shared by the loops: batch counts under the limit_*_batches flags, moving
batches to the device, finding an epoch's last batch in a loader without a length, persistent
DataLoader workers across a resume, and RNG isolation for the sanity check."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from mopt_fast.exceptions import MisconfigurationException
from mopt_fast.trainer.checkpoint import rng_state, set_rng_state

__all__ = ["Lookahead", "isolated_rng", "iter_continuing", "move_to_device", "num_batches", "persistent_workers",
           "set_sampler_epoch", "shut_down_workers"]


def num_batches(loader: Any, limit: int | float) -> int | float:
    """The batches one pass over `loader` gives under a limit_*_batches value (inf: no length)."""
    try:
        length: int | float = len(loader)
    except TypeError:
        length = float("inf")
    if isinstance(limit, int):
        return min(length, limit)
    if length == float("inf"):
        if limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"A loader without a length needs an int limit (batches) or 0.0 / 1.0, got {limit}"
            )
        return length if limit == 1.0 else 0
    return int(length * limit)


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


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


def persistent_workers(loader: Any) -> bool:
    return isinstance(loader, DataLoader) and loader.num_workers > 0 and loader.persistent_workers


def shut_down_workers(loader: Any) -> None:
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
    state = rng_state()
    generator = loader.generator.get_state() if loader.generator is not None else None
    iter(loader)  # starts the workers
    set_rng_state(state)
    if generator is not None:
        loader.generator.set_state(generator)
    return iter(loader)


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
