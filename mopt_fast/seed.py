"""Seeding, as Lightning's ``lightning.fabric.utilities.seed`` (re-exported by lightning.pytorch).

`seed_everything` seeds Python's `random`, numpy (when installed) and torch, and records the seed
in the environment (``PL_GLOBAL_SEED``, ``PL_SEED_WORKERS``: the names Lightning uses, so a script
and the processes it starts read the same variables under either). `pl_worker_init_function` is
the DataLoader ``worker_init_fn`` Lightning installs after ``seed_everything(workers=True)``; it
derives each worker's seeds with Lightning's algorithm, so the workers draw the same numbers under
either framework. `isolate_rng` restores every global RNG on exit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Generator
from typing import Any

import torch

__all__ = ["seed_everything", "reset_seed", "pl_worker_init_function", "isolate_rng"]

log = logging.getLogger(__name__)

max_seed_value = 4294967295  # 2^32 - 1 (uint32): what numpy accepts
min_seed_value = 0


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional
        return None
    return numpy


def _env_rank() -> int | None:
    """The process's rank from the launcher's environment, as Lightning reads it."""
    # SLURM_PROCID can be set without SLURM managing the processes: LOCAL_RANK is checked first.
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        rank = os.environ.get(key)
        if rank is not None:
            return int(rank)
    return None


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed torch, numpy and Python's `random`; returns the seed.

    Args:
        seed: the seed. None reads ``PL_GLOBAL_SEED`` from the environment, or takes 0 (with a
            warning) when that is unset too. Must lie in [0, 2**32 - 1].
        workers: record ``PL_SEED_WORKERS=1``, so the Trainer gives data loaders without their own
            ``worker_init_fn`` `pl_worker_init_function` (distinct, reproducible worker seeds).
        verbose: log "Seed set to N" (logger ``mopt_fast.seed``, level INFO).
    """
    if seed is None:
        env_seed = os.environ.get("PL_GLOBAL_SEED")
        if env_seed is None:
            seed = 0
            if verbose and (_env_rank() or 0) == 0:
                warnings.warn(f"No seed found, seed set to {seed}", stacklevel=2)
        else:
            try:
                seed = int(env_seed)
            except ValueError:
                raise ValueError(f"Invalid seed specified via PL_GLOBAL_SEED: {repr(env_seed)}") from None
    elif not isinstance(seed, int):
        seed = int(seed)

    if not (min_seed_value <= seed <= max_seed_value):
        raise ValueError(f"{seed} is not in bounds, numpy accepts from {min_seed_value} to {max_seed_value}")

    if verbose:
        rank = _env_rank()
        log.info(f"[rank: {rank}] Seed set to {seed}" if rank is not None else f"Seed set to {seed}")

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np = _numpy()
    if np is not None:
        np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = f"{int(workers)}"
    return seed


def reset_seed() -> None:
    """Seed again with what `seed_everything` last set (a no-op when it was never called)."""
    seed = os.environ.get("PL_GLOBAL_SEED", None)
    if seed is None:
        return
    workers = os.environ.get("PL_SEED_WORKERS", "0")
    seed_everything(int(seed), workers=bool(int(workers)), verbose=False)


def pl_worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """The DataLoader ``worker_init_fn`` of ``seed_everything(workers=True)``: seeds torch, Python's
    `random` and numpy in worker `worker_id` of process `rank` (default: the launcher's RANK /
    LOCAL_RANK environment, else 0) from the worker's torch seed, with Lightning's algorithm."""
    global_rank = rank if rank is not None else (_env_rank() or 0)
    process_seed = torch.initial_seed()
    # back out the base seed so all its bits are used
    base_seed = process_seed - worker_id
    log.debug(
        f"Initializing random number generators of process {global_rank} worker {worker_id} with base seed {base_seed}"
    )
    seed_sequence = _generate_seed_sequence(base_seed, worker_id, global_rank, count=4)
    torch.manual_seed(seed_sequence[0])  # torch takes a 64-bit seed
    random.seed((seed_sequence[1] << 32) | seed_sequence[2])  # two 64-bit seeds combined
    np = _numpy()
    if np is not None:
        ss = np.random.SeedSequence([base_seed, worker_id, global_rank])
        np.random.seed(ss.generate_state(4))


def _generate_seed_sequence(base_seed: int, worker_id: int, global_rank: int, count: int) -> list[int]:
    """Seeds from a base seed, worker id and rank: MurmurHash3's finalizer, then a 64-bit linear
    congruential generator (Knuth's multiplier)."""
    mask = (1 << 64) - 1
    combined_seed = (base_seed << 32) | (worker_id << 16) | global_rank
    combined_seed ^= combined_seed >> 33
    combined_seed = (combined_seed * 0xFF51AFD7ED558CCD) & mask
    combined_seed ^= combined_seed >> 33
    combined_seed = (combined_seed * 0xC4CEB9FE1A85EC53) & mask
    combined_seed ^= combined_seed >> 33
    seeds = []
    for _ in range(count):
        combined_seed = (combined_seed * 6364136223846793005 + 1) & mask
        seeds.append(combined_seed)
    return seeds


@contextlib.contextmanager
def isolate_rng(include_cuda: bool = True) -> Generator[None, None, None]:
    """Puts the global RNGs of torch, numpy, Python (and CUDA, unless `include_cuda` is False)
    back where they were when the block was entered."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np = _numpy()
    if np is not None:
        states["numpy"] = np.random.get_state()
    if include_cuda:
        states["torch.cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    yield
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states:
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    if np is not None:
        np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as plain data (numpy's as lists, so weights_only loads it)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        legacy = numpy.random.get_state(legacy=True)  # the default, named: the stubs' no-argument overload is a dict
        assert isinstance(legacy, tuple)  # a dict only for a generator other than MT19937
        name, keys, pos, has_gauss, cached = legacy
        state["numpy"] = [name, keys.tolist(), pos, has_gauss, cached]
    except ImportError:  # numpy is optional
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))

