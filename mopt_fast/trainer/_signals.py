"""Preemption and faults during fit: SIGTERM / SIGUSR1, and a collective that times out.

A scheduler that preempts a job sends SIGTERM (SLURM sends SIGUSR1 first, when asked to): the
Trainer's handler only records the signal. The fit loop reads the record at the end of each batch
(where a checkpoint resumes exactly); once it is set, the step in flight has finished, so the loop
writes Lightning's HPC checkpoint (``hpc_ckpt_{N}.ckpt`` in ``default_root_dir``) through
``trainer.save_checkpoint`` and raises `SIGTERMException`: the callbacks' on_exception run, the
loggers finalize as "failed", and the process exits with status 128 + the signal's number (143
for SIGTERM), as a shell reports a process a signal ended. ``fit(ckpt_path="hpc")`` or
``fit(ckpt_path="last")`` then resumes as if nothing had happened.

Under DDP all ranks must stop after the same batch even when one rank alone got the signal, or
the others would wait for it in their next collective. Each rank's record goes into an all-reduce
(MAX) started asynchronously after every batch and read after the next one (`StopVote`): gloo runs
it on its worker threads while the next step computes, so reading it costs no wait, and every rank
reads the same value after the same batch. The vote is a CPU tensor on a gloo group (a side group
when the training group is NCCL's), so it never waits on a GPU stream: one small CPU all-reduce per
batch, apart from the step's own collectives. (Lightning 2.6 broadcasts rank 0's record, blocking,
before every batch, so a signal that reaches another rank alone is not seen by rank 0.) One
process needs no vote: the record is read as it is.

A gloo collective that times out says only "Timed out waiting 5000ms for recv operation"; the
Trainer raises `CollectiveTimeoutError` instead, naming the collective and the ranks that did not
join it (found through the process group's store: each rank that timed out writes its rank there).
"""
from __future__ import annotations

import datetime
import os
import re
import signal
import sys
import threading
import time
import traceback
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mopt_fast.exceptions import CollectiveTimeoutError, SIGTERMException

if TYPE_CHECKING:
    from mopt_fast.trainer.trainer import Trainer

# SIGUSR1 is SLURM's usual "--signal" choice: the job is about to be preempted or reach its limit.
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))
HPC_PREFIX = "hpc_ckpt_"


class PreemptionSignals:
    """The SIGTERM / SIGUSR1 handlers of one fit: `install` records the previous handlers, `restore`
    puts them back. A signal sets `received` (its number; the first one wins) and then runs the
    handler that was there before, if it is a Python callable (a script's own handler still runs)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return  # installed already; or not the main thread, which alone may set handlers
        for signum in PREEMPTION_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def restore(self, redeliver: bool = False) -> None:
        """Put the previous handlers back. `redeliver`: the fit ended without acting on a signal it
        received (one after the last batch): raise it again now, if nothing of the script's handled
        it already, so that its default action (ending the process) is not lost."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if redeliver and self.received is not None and previous.get(self.received) in (signal.SIG_DFL, None):
            signal.raise_signal(self.received)

    def __getstate__(self) -> dict[str, Any]:  # a Trainer pickled during fit: the handlers stay here
        return {"received": self.received, "_previous": {}}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Nothing else here: the loop acts on the record between batches (a handler interrupts
        # arbitrary code, a checkpoint write or a collective included).
        if self.received is None:
            self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)


class StopVote:
    """The preemption signal any rank received, decided alike on every rank (see the module's
    docstring): `poll` after each batch returns the vote started after the previous batch (the
    highest signal number any rank had then, 0 for none) and starts the next one. `drain` waits for
    the vote in flight, at the end of the fit."""

    def __init__(self) -> None:
        # The vote is a CPU tensor on a gloo group (the default group when it is gloo, else one made
        # for it): reading it never waits for a GPU stream, and it never queues behind the step's
        # NCCL collectives. Made here, at the same point of the fit on every rank, as new_group needs.
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._flag: torch.Tensor | None = None
        self._work: Any = None

    def poll(self, received: int) -> int:
        decided = self._await_vote()
        if not decided:
            self._flag = torch.tensor([received], dtype=torch.int32)
            self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return decided

    def drain(self) -> None:
        self._await_vote()

    def _await_vote(self) -> int:  # the name is what a timeout's message reports (see COLLECTIVES)
        work, self._work = self._work, None
        if work is None:
            return 0
        work.wait()
        assert self._flag is not None
        return int(self._flag.item())


class PreemptionCheck:
    """What the fit loop calls after each batch: the signal to stop for, 0 to go on. One process
    reads the handler's record; a distributed one votes (`StopVote`)."""

    def __init__(self, signals: PreemptionSignals, distributed: bool) -> None:
        self._signals = signals
        self._vote = StopVote() if distributed else None

    def __call__(self) -> int:
        received = self._signals.received or 0
        return received if self._vote is None else self._vote.poll(received)

    def drain(self) -> None:
        if self._vote is not None:
            self._vote.drain()


def exit_status(signum: int) -> int:
    """A shell's status for a process that `signum` ended: 128 + its number."""
    return 128 + signum


def sigterm_exception(signum: int) -> SIGTERMException:
    """mopt_fast's SIGTERMException with the exit status; when the script imported Lightning, of a
    class that is also Lightning's, so that ``isinstance(e, SIGTERMException)`` holds for either."""
    cls: type[SIGTERMException] = SIGTERMException
    lightning_exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    theirs = getattr(lightning_exceptions, "SIGTERMException", None)
    if isinstance(theirs, type) and issubclass(theirs, SystemExit):
        cls = _both(theirs)
    return cls(exit_status(signum))


_BOTH: dict[type, type[SIGTERMException]] = {}


def _both(theirs: type) -> type[SIGTERMException]:
    if theirs not in _BOTH:
        _BOTH[theirs] = type("SIGTERMException", (SIGTERMException, theirs), {"__module__": SIGTERMException.__module__})
    return _BOTH[theirs]


# -- the HPC checkpoint (Lightning's checkpoint_connector: hpc_save_path, _hpc_resume_path) ---------------
_HPC_NAME = re.compile(rf"^{HPC_PREFIX}(\d+)\.ckpt$")


def _hpc_versions(folder: str) -> list[int]:
    """The numbers N of the ``hpc_ckpt_N.ckpt`` files and sharded folders in `folder`. Exact names
    only: what a killed sharded save leaves (``.hpc_ckpt_N.ckpt.partial``) is not a checkpoint."""
    if not os.path.isdir(folder):
        return []
    return [int(m.group(1)) for m in map(_HPC_NAME.match, os.listdir(folder)) if m is not None]


def hpc_save_path(folder: str) -> str:
    """The next HPC checkpoint in `folder`: ``hpc_ckpt_{N + 1}.ckpt`` after the highest N there."""
    return os.path.join(folder, f"{HPC_PREFIX}{max(_hpc_versions(folder), default=0) + 1}.ckpt")


def hpc_resume_path(folder: str) -> str | None:
    """The HPC checkpoint of the highest number in `folder`, None if there is none."""
    versions = _hpc_versions(folder)
    return os.path.join(folder, f"{HPC_PREFIX}{max(versions)}.ckpt") if versions else None


def stop_for_preemption(trainer: Trainer, signum: int) -> SIGTERMException:
    """After the batch in flight: the HPC checkpoint (every rank takes rank 0's path, as a sharded
    save writes to one place), a message, and the exception that ends the fit."""
    path = trainer.strategy.broadcast(hpc_save_path(trainer.default_root_dir), src=0)
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        name = signal.Signals(signum).name
        print(f"mopt_fast: received {name} during fit; stopped after global step {trainer.global_step} and saved "
              f"{path}. Resume with trainer.fit(..., ckpt_path=\"hpc\") or ckpt_path=\"last\". Exiting with status "
              f"{exit_status(signum)}.", file=sys.stderr, flush=True)
    return sigterm_exception(signum)


# -- collective timeouts ------------------------------------------------------------------------------------
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
# Python frames a collective is called from, innermost first wins: what the message calls it.
COLLECTIVES = {
    "_await_vote": "all_reduce (the preemption-signal vote)",
    "_engine_run_backward": "all_reduce of gradients (in backward)",
    "all_reduce": "all_reduce", "barrier": "barrier", "broadcast": "broadcast",
    "broadcast_object_list": "broadcast", "all_gather": "all_gather", "all_gather_object": "all_gather",
    "all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter", "reduce": "reduce",
    "gather": "gather", "scatter": "scatter", "monitored_barrier": "barrier",
}
_FAULT_KEY = "mopt_fast/collective_timeout/"


def _collective_name(tb: TracebackType | None) -> str | None:
    """What the innermost collective frame of `tb` is called, None when no collective raised."""
    names = [frame.name for frame in traceback.extract_tb(tb)]
    for name in reversed(names):
        if name in COLLECTIVES:
            return COLLECTIVES[name]
    return None


def _store() -> Any:
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return get() if get is not None else None
    except (RuntimeError, ValueError):
        return None


def missing_ranks(rank: int, world_size: int, grace: float) -> list[int] | None:
    """The ranks that did not report a timed-out collective within `grace` seconds of this one's
    report (they are still inside something else: hung, or dead); None: the store is unreachable."""
    store = _store()
    if store is None:
        return None
    try:
        store.set(f"{_FAULT_KEY}{rank}", "1")
        deadline = time.monotonic() + grace
        while True:
            missing = [r for r in range(world_size) if r != rank and not store.check([f"{_FAULT_KEY}{r}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)
    except (RuntimeError, ValueError):  # the store's host (rank 0) is gone too
        return None


def explain_timeout(exc: BaseException, rank: int, world_size: int,
                    timeout: datetime.timedelta) -> CollectiveTimeoutError | None:
    """A clear error for a collective that timed out in `exc` (gloo's or NCCL's), else None."""
    if not isinstance(exc, RuntimeError) or isinstance(exc, CollectiveTimeoutError) or world_size < 2:
        return None
    if not _TIMEOUT.search(str(exc)) or not dist.is_available() or not dist.is_initialized():
        return None
    collective = _collective_name(exc.__traceback__)
    backend_error = getattr(dist, "DistBackendError", None)
    if collective is None:
        # Another timeout (a DataLoader's, a user's socket): not this module's to explain, unless
        # torch.distributed raised it from a frame not listed above.
        if backend_error is None or not isinstance(exc, backend_error):
            return None
        collective = "a collective"
    # The other ranks that timed out did so within about one step of this one.
    grace = min(timeout.total_seconds() / 2, 10.0)
    missing = missing_ranks(rank, world_size, grace)
    if missing:
        who = "rank " + ", ".join(map(str, missing)) if len(missing) == 1 else "ranks " + ", ".join(map(str, missing))
        message = f"{who} did not join {collective} within {timeout}"
    else:
        message = f"{collective} did not complete within {timeout} (the ranks that did not join are unknown)"
    return CollectiveTimeoutError(
        f"{message} (seen on rank {rank}; raise the strategy's timeout=... if a step can take longer): {exc}")
