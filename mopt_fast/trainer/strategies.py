"""Strategies: one process (`SingleDeviceStrategy`), or data parallel on torch.distributed:
`DDPStrategy` (torch's DistributedDataParallel) and `FSDPStrategy` (FSDP2's fully_shard), gloo
on CPU, nccl on CUDA.

DDP processes come from `torchrun` (its RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT environment is read as it is), or, run as a plain script, from the Trainer itself: the
first process becomes rank 0 and starts the others by running the same command again with their
rank in the environment (as Lightning does). Several nodes: torchrun on every node (its rendezvous
numbers the nodes: GROUP_RANK is the node rank, as Lightning's TorchElasticEnvironment reads it);
num_nodes > 1 started otherwise is not built.

Rank 0 of a self-launched run hosts the rendezvous store and watches the ranks it started until
they have all joined the process group: one that exits before that (a crash at import, a script
error before fit) is an error on rank 0 within a fraction of a second, not a wait for the timeout.

At exit (an atexit hook, while the interpreter is whole), a process group this module created is
destroyed, then the process waits until gloo's worker threads are idle. Why: a gloo work can hold
Python objects (tensors a collective was given, and the thread-local state it captured, which
during a backward pass holds a Python object), and a worker thread sometimes drops the last
reference to one, which needs the GIL, just after the collective has completed. A barrier also
defers the destruction of earlier works to that moment. If the main thread reaches interpreter
finalization first, Python ends the worker thread as it asks for the GIL, the C++ unwinding hits
a noexcept destructor, and the process aborts ("terminate called without an active exception",
exit -6) after a fit that succeeded. destroy_process_group alone does not help: the threads live
until the group's C++ object is freed, and DistributedDataParallel keeps it alive to the end.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from mopt_fast.core.saving import load_checkpoint, seal
from mopt_fast.exceptions import MisconfigurationException, not_built
from mopt_fast.plugins.io import TorchCheckpointIO
from mopt_fast.trainer._data import with_sampler

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

    from mopt_fast.core.module import LightningModule
    from mopt_fast.precision import Precision
    from mopt_fast.trainer.trainer import Trainer

_T = TypeVar("_T")

__all__ = ["Strategy", "SingleDeviceStrategy", "DDPStrategy", "FSDPStrategy", "make_strategy"]

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Set in the environment of the ranks rank 0 starts: they check in with its store (see
# _ProcessGroupStrategy._await_children) before setting up the process group.
_SELF_LAUNCHED_VAR = "MOPT_FAST_SELF_LAUNCHED"
_JOINED_KEY = "mopt_fast/ranks_joined"


class _TrainingStepForward(nn.Module):
    """Routes DDP's forward to `training_step`: DDP prepares its gradient reduction in forward."""

    def __init__(self, module: LightningModule) -> None:
        super().__init__()
        self.module = module
        self.ddp: nn.parallel.DistributedDataParallel | None = None

    def forward(self, *args: Any) -> Any:
        out = self.module.training_step(*args)
        if not self.module.automatic_optimization and self.ddp is not None:
            # Manual optimization has already run its backward passes inside training_step (each
            # prepared by before_backward): DDP must not prepare for another one after forward.
            self.ddp.require_backward_grad_sync = False
        return out


def _reduce_op(reduce_op: Any) -> tuple[Any, bool]:
    """Lightning's reduce_op (a name or a ``ReduceOp``) as torch.distributed's op, and whether the
    sum is then divided by the world size ("mean"/"avg": gloo has no AVG)."""
    if not isinstance(reduce_op, str):
        return (dist.ReduceOp.SUM, False) if reduce_op is None else (reduce_op, False)
    name = reduce_op.lower()
    if name in ("mean", "avg"):
        return dist.ReduceOp.SUM, True
    return getattr(dist.ReduceOp, name.upper()), False


class Strategy:
    """One process on one device.

    Besides the Trainer's own seam (wrap, training_step, block_grad_sync...), a strategy has the
    public surface of Lightning's `Strategy` that callbacks use, with Lightning's signatures and
    types: `root_device` (a property), `is_global_zero`, `lightning_module`, `model`, `optimizers`,
    `precision_plugin`, `reduce`, `all_gather`, `broadcast`, `barrier`, `reduce_boolean_decision`,
    `save_checkpoint` and `remove_checkpoint`. The Trainer attaches itself (`connect_trainer`);
    what the trainer holds (module, optimizers, precision) is read from it, never copied.
    """

    is_distributed = False

    def __init__(self) -> None:
        self.world_size = 1
        self.global_rank = 0
        self.local_rank = 0
        self.node_rank = 0
        self._device_type = "cpu"  # "cpu" or "cuda": set by the Trainer (connect_trainer)
        self._device_index: int | None = None  # the CUDA device of a one-process run
        self._trainer: Trainer | None = None
        self._root_device: torch.device | None = None  # root_device, once known (read per logged value)
        # How checkpoints reach storage (Lightning's CheckpointIO plugin; `Trainer(plugins=...)` sets another).
        self.checkpoint_io: Any = TorchCheckpointIO()

    def connect_trainer(self, trainer: Trainer, device_type: str, device_index: int | None) -> None:
        """The Trainer this strategy runs for, and the device type it was given ("cpu", "cuda")."""
        self._trainer = trainer
        self._device_type = device_type
        self._device_index = device_index
        self._root_device = None

    # -- Lightning's public surface ------------------------------------------------------------------
    @property
    def root_device(self) -> torch.device:
        """This process's device: the CPU, or its CUDA device (the local rank's in a distributed run)."""
        device = self._root_device
        if device is None:
            index = self.local_rank if self.is_distributed else (self._device_index or 0)
            device = torch.device("cpu") if self._device_type == "cpu" else torch.device("cuda", index)
            self._root_device = device
        return device

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def lightning_module(self) -> LightningModule | None:
        return self._trainer.lightning_module if self._trainer is not None else None

    @property
    def model(self) -> nn.Module | None:
        """What runs the training step: the DDP wrapper in a DDP fit, else the module (Lightning's)."""
        return self.lightning_module

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._trainer.optimizers if self._trainer is not None else []

    @property
    def precision_plugin(self) -> Precision | None:
        return self._trainer.precision_plugin if self._trainer is not None else None

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any:
        """One process: `tensor` as it is (Lightning's)."""
        return tensor

    def all_gather(self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False) -> torch.Tensor:
        return tensor

    def broadcast(self, obj: _T, src: int = 0) -> _T:
        return obj

    def barrier(self, name: str | None = None) -> None:
        pass

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 (Lightning's name)
        """One process: `decision` itself (Lightning's)."""
        return decision

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write `checkpoint` to `filepath` on global rank 0, through `checkpoint_io` (by default
        atomically, with mopt_fast's checksum)."""
        if self.is_global_zero:
            io = self.checkpoint_io
            if type(io) is not TorchCheckpointIO:  # a user's writer: checksummed here, checked on load
                checkpoint = seal(checkpoint)
            io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at `checkpoint_path`, read through `checkpoint_io` and checked as every
        checkpoint is (`mopt_fast.core.saving.load_checkpoint`); ``weights_only`` None: True."""
        io = self.checkpoint_io
        # A user's reader gets `weights_only` as given (None included), as Lightning hands it over.
        read = None if type(io) is TorchCheckpointIO else (
            lambda path, _: io.load_checkpoint(path, weights_only=weights_only))
        return load_checkpoint(os.fspath(checkpoint_path), weights_only=True if weights_only is None else weights_only,
                               read=read)

    def remove_checkpoint(self, filepath: str | os.PathLike) -> None:
        """Delete a checkpoint (file or folder) on global rank 0, through `checkpoint_io`, if it exists."""
        if self.is_global_zero:
            self.checkpoint_io.remove_checkpoint(filepath)

    # -- the Trainer's seam ------------------------------------------------------------------------
    def setup_environment(self, accelerator: str) -> None:
        pass

    def wrap(self, module: LightningModule) -> None:
        pass

    def training_step(self, module: Any, args: tuple) -> Any:
        return module.training_step(*args)

    def before_backward(self, module: Any, loss: torch.Tensor) -> None:
        pass

    @contextlib.contextmanager
    def block_grad_sync(self, block: bool) -> Iterator[None]:
        yield

    def process_loader(self, loader: Any, shuffle_default: bool) -> Any:
        return loader

    def abort(self) -> None:
        """A fit failed: stop any processes this strategy started."""

    def teardown(self) -> None:
        """The end of every entry point (Lightning's Strategy.teardown): the checkpoint IO's."""
        self.checkpoint_io.teardown()


SingleDeviceStrategy = Strategy


def _wait_until_gloo_threads_idle(timeout: float = 10.0) -> None:
    """Sleeps (the GIL free, so a worker thread waiting for it takes it at once) until every
    gloo worker thread ("pt_gloo_runloop") is seen asleep in two checks in a row: asleep with
    the GIL free means waiting for work, not for the GIL, and a thread still running or runnable
    is waited for. Reads the thread states from /proc (Linux); elsewhere, or under a torch that
    does not name its threads, it is a fixed pause of a few hundredths of a second."""
    tasks = "/proc/self/task"
    deadline = time.monotonic() + timeout
    idle_checks = 0
    while idle_checks < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
        busy = False
        for tid in os.listdir(tasks) if os.path.isdir(tasks) else ():
            try:
                with open(f"{tasks}/{tid}/comm") as f:
                    if f.read().strip() != "pt_gloo_runloop":
                        continue
                with open(f"{tasks}/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]  # the field after "(name)"
            except (OSError, IndexError):  # the thread ended meanwhile
                continue
            busy = busy or state != "S"
        idle_checks = 0 if busy else idle_checks + 1


class _LaunchedRankWatcher(threading.Thread):
    """Watches the ranks rank 0 started while rank 0 sits in ``init_process_group``, after they
    have all checked in: a blocking wait in C++ that no Python signal interrupts, and that waits
    the whole timeout (30 minutes by default) for a rank that died in that window. The only way
    out is to end the process; nothing has run yet that could be lost."""

    def __init__(self, children: list[subprocess.Popen]) -> None:
        super().__init__(name="mopt_fast-rank-watcher", daemon=True)
        self._children = children
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            for rank, proc in enumerate(self._children, start=1):
                if proc.poll() is not None:
                    print(f"mopt_fast: DDP rank {rank} (pid {proc.pid}) exited with code {proc.returncode} while the "
                          "process group was being set up; stopping all ranks", file=sys.stderr, flush=True)
                    for other in self._children:
                        if other.poll() is None:
                            other.kill()
                    os._exit(1)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relaunch_command() -> list[str]:
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    return [sys.executable, "-m", spec.name, *sys.argv[1:]]


class _ProcessGroupStrategy(Strategy):
    """What DDP and FSDP share: the processes (from torchrun or started here), the process group,
    the ranks, distributed samplers, reductions and barriers."""

    is_distributed = True

    def __init__(
        self,
        timeout: datetime.timedelta = datetime.timedelta(minutes=30),
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.process_group_backend = process_group_backend
        self.num_processes = 1
        self.num_nodes = 1
        self._children: list[subprocess.Popen] = []
        self._store: dist.TCPStore | None = None  # the rendezvous store rank 0 hosts when it starts the ranks

    def configure(self, devices: int, num_nodes: int) -> None:
        self.num_processes, self.num_nodes = devices, num_nodes
        self.world_size = devices * num_nodes

    def setup_environment(self, accelerator: str) -> None:
        if dist.is_available() and dist.is_initialized():
            self._read_ranks()
            return
        launched = False
        if all(v in os.environ for v in _TORCHRUN_VARS):
            self._check_launcher_world_size()
        elif self.num_nodes > 1:
            raise not_built("num_nodes > 1 without torchrun (Lightning's NODE_RANK / MASTER_ADDR environment)",
                            "start the processes with torchrun on every node (docs/distributed.md: Several nodes)")
        else:
            launched = True
        # Registered before the launcher's wait for its ranks, so it runs after it (atexit runs
        # last-in first-out): rank 0 tears its group (and the store the ranks use) down last.
        atexit.register(self._destroy_at_exit)
        if launched:
            self._launch_local_processes()
        self._read_ranks()
        backend = self.process_group_backend or ("nccl" if accelerator == "cuda" else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        store: dist.Store | None = None
        if launched:
            store = self._store
            self._await_children()
        elif os.environ.get(_SELF_LAUNCHED_VAR) == "1":  # a rank rank 0 started: check in with it
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                                  is_master=False, timeout=self.timeout)
            store.add(_JOINED_KEY, 1)
        if store is None:
            store = self._elastic_attempt_store()
        if store is None:
            dist.init_process_group(backend, rank=self.global_rank, world_size=self.world_size, timeout=self.timeout)
            return
        watcher = _LaunchedRankWatcher(self._children) if self._children else None
        if watcher is not None:
            watcher.start()
        try:
            dist.init_process_group(backend, store=store, rank=self.global_rank, world_size=self.world_size,
                                    timeout=self.timeout)
        finally:
            if watcher is not None:
                watcher.stop()

    def _check_launcher_world_size(self) -> None:
        """The launcher's WORLD_SIZE must be devices x num_nodes: Lightning's ValueError (its
        TorchElasticEnvironment.validate_settings) before any process group is made."""
        world_size = int(os.environ["WORLD_SIZE"])
        if world_size != self.world_size:
            raise ValueError(
                f"You set `devices={self.num_processes}` and `num_nodes={self.num_nodes}` in Lightning, but the product"
                f" ({self.num_processes} * {self.num_nodes}) does not match the world size ({world_size})."
            )

    # -- elastic restarts (torchrun --max-restarts) -------------------------------------------------
    def _elastic_attempt_store(self) -> dist.Store | None:
        """Under torchrun, the rendezvous store with a prefix per restart. torchrun's agent keeps one
        store for every attempt, and torch's env:// set-up uses it without one: a restarted group
        could read the addresses its ranks published in the attempt before (gloo then fails with
        "Connection refused" to a process that is gone). None outside torchrun."""
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            return None
        agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                              is_master=not agent_hosts_it and self.global_rank == 0, timeout=self.timeout,
                              multi_tenant=True)
        return dist.PrefixStore(f"mopt_fast/attempt_{attempt}", store)

    def _destroy_at_exit(self) -> None:
        """The process group this strategy created, then the store rank 0 hosts for it, then a
        wait for gloo's worker threads to be idle (see the module's docstring). A group the script
        destroyed itself is left alone."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self._store = None
        _wait_until_gloo_threads_idle()

    def _await_children(self) -> None:
        """Rank 0: wait until every rank it started has checked in with its store, failing as
        soon as one of them has exited (it cannot join any more)."""
        store = self._store
        assert store is not None  # _launch_local_processes started it
        deadline = time.monotonic() + self.timeout.total_seconds()
        while store.add(_JOINED_KEY, 0) < len(self._children):
            for rank, proc in enumerate(self._children, start=1):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"DDP rank {rank} (pid {proc.pid}) exited with code {proc.returncode} before joining the "
                        "process group (its own output says why)"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the DDP ranks started by rank 0 did not join the process group within {self.timeout}"
                )
            time.sleep(0.02)

    def _read_ranks(self) -> None:
        self._root_device = None  # the local rank decides it
        self.global_rank = int(os.environ.get("RANK", dist.get_rank() if dist.is_initialized() else 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.global_rank % self.num_processes))
        self.node_rank = int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", 0)))
        if dist.is_initialized():
            self.world_size = dist.get_world_size()

    def _launch_local_processes(self) -> None:
        # The store listens before any rank starts, on a port the OS picked (no race for a free one).
        self._store = dist.TCPStore("127.0.0.1", 0, self.world_size, is_master=True, timeout=self.timeout,
                                    wait_for_workers=False)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self._store.port),
                          WORLD_SIZE=str(self.world_size), NODE_RANK="0")
        command = _relaunch_command()
        for rank in range(1, self.num_processes):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), **{_SELF_LAUNCHED_VAR: "1"})
            self._children.append(subprocess.Popen(command, env=env))
        os.environ.update(RANK="0", LOCAL_RANK="0")
        # The other ranks run the whole script, which may go on with collectives after fit:
        # rank zero waits for them only when it exits.
        atexit.register(self._wait_for_children)

    def process_loader(self, loader: Any, shuffle_default: bool) -> Any:
        """A DataLoader with the default sampler gets a DistributedSampler (shuffling when the
        original did), as Lightning does; anything else is left as it is."""
        if not isinstance(loader, DataLoader) or isinstance(loader.sampler, DistributedSampler):
            return loader
        if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)) or loader.batch_size is None:
            return loader
        sampler: DistributedSampler[int] = DistributedSampler(
            loader.dataset, num_replicas=self.world_size, rank=self.global_rank,
            shuffle=isinstance(loader.sampler, RandomSampler), seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
        )
        return with_sampler(loader, sampler)

    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any = "mean") -> Any:
        """`tensor` reduced over the ranks of `group` (default: all), into a new tensor (Lightning's
        reduces in place); "mean" divides the sum by the group's size. Not a tensor: as it is."""
        if not isinstance(tensor, torch.Tensor) or not dist.is_initialized():
            return tensor
        if group is not None and dist.get_rank(group) < 0:
            # all_reduce would do nothing here and the group's size would read -1 (Lightning has
            # that flaw: a "mean" then negates the value)
            raise ValueError(f"rank {dist.get_rank()} reduces over a process group it is not a member of "
                             "(sync_dist_group must hold the logging rank)")
        op, divide = _reduce_op(reduce_op)
        out = tensor.clone()
        dist.all_reduce(out, op=op, group=group)
        if not divide:
            return out
        size = dist.get_world_size(group)
        return out / size if out.is_floating_point() else (out / size).to(out.dtype)  # truncated, as Lightning

    def all_gather(self, tensor: torch.Tensor, group: Any | None = None, sync_grads: bool = False) -> torch.Tensor:
        """`tensor` of every rank, stacked: shape (world_size, *tensor.shape); `sync_grads`: the
        gather is differentiable (Lightning's)."""
        if not dist.is_initialized():
            return tensor
        from torch.distributed.nn.functional import all_gather

        tensor = tensor.contiguous()
        with contextlib.nullcontext() if sync_grads else torch.no_grad():
            gathered = all_gather(tensor, group if group is not None else dist.group.WORLD)
        return torch.stack(gathered)

    def broadcast(self, obj: _T, src: int = 0) -> _T:
        """Rank `src`'s `obj` on every rank (pickled through torch.distributed)."""
        if not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def barrier(self, name: str | None = None) -> None:
        if dist.is_initialized():
            dist.barrier()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 (Lightning's name)
        """True when every rank decided True (`all`), or any did (``all=False``)."""
        total = self.reduce(torch.tensor(int(decision), device=self.root_device), reduce_op="sum")
        return bool(total == self.world_size) if all else bool(total)

    def _wait_for_children(self) -> None:
        failed = [proc.returncode for proc in self._children if proc.wait() != 0]
        self._children = []
        if failed:
            # -- preemption (trainer/_signals.py): ranks that stopped for a signal exit with 128 + its number
            preempted = {128 + int(s) for s in (getattr(signal, "SIGTERM", 15), getattr(signal, "SIGUSR1", 10))}
            if len(set(failed)) == 1 and failed[0] in preempted:
                os._exit(failed[0])  # every rank stopped for the signal, after its checkpoint: rank 0's status too
            print(f"mopt_fast: {len(failed)} worker process(es) failed (exit codes {failed})", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)  # from an atexit hook this is the only way to make the exit code say so

    def abort(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()
        self._children = []


class DDPStrategy(_ProcessGroupStrategy):
    """torch.nn.parallel.DistributedDataParallel over `devices` processes per node.

    Args:
        find_unused_parameters: DDP's flag; needed when a backward does not reach every
            parameter (a GAN's two optimizers under manual optimization, as in Lightning).
        timeout: how long a collective waits for a missing rank before raising (a rank that
            dies makes the others fail at their next collective, not hang).
        process_group_backend: "gloo" (the CPU default) or "nccl" (the CUDA default).
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        timeout: datetime.timedelta = datetime.timedelta(minutes=30),
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(timeout, process_group_backend)
        self.find_unused_parameters = find_unused_parameters
        self._ddp: nn.parallel.DistributedDataParallel | None = None

    @property
    def model(self) -> nn.Module | None:
        return self._ddp if self._ddp is not None else self.lightning_module

    def wrap(self, module: LightningModule) -> None:
        device_ids = [self.local_rank] if next(module.parameters(), torch.empty(0)).is_cuda else None
        wrapper = _TrainingStepForward(module)
        self._ddp = nn.parallel.DistributedDataParallel(
            wrapper, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
        )
        wrapper.ddp = self._ddp

    def training_step(self, module: Any, args: tuple) -> Any:
        ddp = self._ddp
        assert ddp is not None  # set by wrap()
        out = ddp(*args)
        if not module.automatic_optimization:
            ddp.require_backward_grad_sync = True
        return out

    def before_backward(self, module: Any, loss: torch.Tensor) -> None:
        """Manual optimization calls backward several times per forward: each one needs the
        reducer prepared again (with the tensors that tell it which parameters were used)."""
        if module.automatic_optimization or self._ddp is None:
            return
        ddp = self._ddp
        if torch.is_grad_enabled() and ddp.require_backward_grad_sync:
            ddp.require_forward_param_sync = True
            tensors = [loss] if ddp.find_unused_parameters and not ddp.static_graph else []
            ddp.reducer._rebuild_buckets()
            ddp.reducer.prepare_for_backward(tensors)
        else:
            ddp.require_forward_param_sync = False

    @contextlib.contextmanager
    def block_grad_sync(self, block: bool) -> Iterator[None]:
        if block and self._ddp is not None:
            with self._ddp.no_sync():
                yield
        else:
            yield


class FSDPStrategy(_ProcessGroupStrategy):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) over the same processes as DDP.

    Each direct child module that holds parameters is sharded, then the root, on a 1-D device
    mesh of all ranks; training_step calls the module directly (the children's forward hooks
    gather and free their parameters). Gradients are DTensor shards, which mopt_fast's clipping
    handles with one all-reduce of the partial norms.

    Checkpoints are sharded FOLDERS written by every rank with torch.distributed.checkpoint, as
    Lightning's ``FSDPStrategy(state_dict_type="sharded")`` writes them (see
    trainer/_sharded_checkpoint.py); ``fit(ckpt_path=folder)`` resumes one on any number of
    ranks, and one process reads one whole (``LightningModule.load_from_checkpoint(folder)``,
    ``mopt_fast.utilities.consolidate_checkpoint``).

    Args:
        async_save: write checkpoints in the background (``torch.distributed.checkpoint.async_save``):
            the training stalls only while the shards are copied; the next save, a checkpoint's
            removal and the end of the run wait for the write under way.
    """

    def __init__(self, timeout: datetime.timedelta = datetime.timedelta(minutes=30),
                 process_group_backend: str | None = None, async_save: bool = False) -> None:
        super().__init__(timeout, process_group_backend)
        self._sharded: list[FSDPModule] = []
        from mopt_fast.trainer._sharded_checkpoint import ShardedCheckpointer

        self._checkpointer = ShardedCheckpointer(async_save)

    @property
    def async_save(self) -> bool:
        return self._checkpointer.async_save

    # -- sharded checkpoints (trainer/_sharded_checkpoint.py) --------------------------------------
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer`'s state as DTensor shards keyed by parameter name (Lightning's method name)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        module = self.lightning_module
        assert module is not None  # a checkpoint is of a run
        had_state = bool(optimizer.state)
        state = get_optimizer_state_dict(module, optimizer)
        if not had_state:
            # torch initializes an optimizer that never stepped by a step with zero gradients (its
            # _init_optim_state): the live run must not keep that state (Adam's step count would
            # then start at 1).
            optimizer.state.clear()
        return state

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Every rank writes its shards of `checkpoint` into the folder `filepath` (Lightning's error
        for `storage_options`: the sharded save does not go through `checkpoint_io`)."""
        if storage_options is not None:
            raise TypeError(
                "`FSDPStrategy.save_checkpoint(..., storage_options=...)` is not supported because"
                " `FSDPStrategy` does not use the `CheckpointIO`."
            )
        self._checkpointer.save(checkpoint, filepath, self.global_rank, self.world_size)
        trainer = self._trainer
        if trainer is None or trainer.state.status.value != "running":
            self._checkpointer.wait()  # outside a run no teardown would wait for it: complete now

    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded folder: this rank's shards (resharded from any world size), in copies that
        the Trainer's restore puts in place; a single file: read whole, as one process reads it."""
        from mopt_fast.core.sharded_checkpoint import is_sharded_checkpoint

        path = os.fspath(checkpoint_path)
        module = self.lightning_module
        if module is None or not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        return self._checkpointer.load(path, module, self.optimizers, self.global_rank, self.world_size,
                                       True if weights_only is None else weights_only)

    def load_model_state(self, state: dict[str, Any], strict: bool) -> None:
        """The module's state: DTensor shards from a sharded folder, or full tensors from a single
        file (each rank keeps its own shard of them)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.tensor import DTensor

        module = self.lightning_module
        assert module is not None
        full = not any(isinstance(v, DTensor) for v in state.values())
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=full, strict=strict))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """`optimizer`'s state, keyed by parameter name (a sharded folder's, a consolidated file's) or
        by index (a single-process file's: mapped onto the names in the optimizer's order)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        from torch.distributed.tensor import DTensor

        module = self.lightning_module
        assert module is not None
        groups = state["param_groups"]
        if any(isinstance(i, int) for g in groups for i in g["params"]):
            if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                                 "optimizer's group")  # torch's own message for the same mismatch
            names = {p: n for n, p in module.named_parameters()}
            ids = dict(zip((i for g in groups for i in g["params"]),
                           (names[p] for g in optimizer.param_groups for p in g["params"])))
            state = {"state": {ids[k]: v for k, v in state["state"].items()},
                     "param_groups": [{**g, "params": [ids[i] for i in g["params"]]} for g in groups]}
        full = not any(isinstance(v, DTensor) for s in state["state"].values() for v in s.values())
        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=full))
        for group in optimizer.param_groups:  # the full-state path hands tuples (Adam's betas) back as lists
            for key, value in group.items():
                if isinstance(value, list) and isinstance(optimizer.defaults.get(key), tuple):
                    group[key] = tuple(value)

    def remove_checkpoint(self, filepath: str | os.PathLike) -> None:
        """As every strategy's, but after the async save under way (the checkpoint it replaces must
        outlive it)."""
        if self.is_global_zero:
            self._checkpointer.remove(filepath, self.checkpoint_io.remove_checkpoint)

    def teardown(self) -> None:
        """The end of a run: the async save under way, completed and in place."""
        trainer = self._trainer
        failed = trainer is not None and trainer.state.status.value == "interrupted"
        self._checkpointer.teardown(failed)
        super().teardown()

    def wrap(self, module: LightningModule) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self._sharded = []
        device_type = "cuda" if next(module.parameters(), torch.empty(0)).is_cuda else "cpu"
        mesh = init_device_mesh(device_type, (self.world_size,))
        for child in module.children():
            if any(True for _ in child.parameters()):
                self._sharded.append(fully_shard(child, mesh=mesh))  # the child, its class made FSDP's
        self._sharded.append(fully_shard(module, mesh=mesh))

    @contextlib.contextmanager
    def block_grad_sync(self, block: bool) -> Iterator[None]:
        if not block:
            yield
            return
        for m in self._sharded:
            m.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for m in self._sharded:
                m.set_requires_gradient_sync(True)


def make_strategy(strategy: Any, devices: int, num_nodes: int) -> Strategy:
    if isinstance(strategy, Strategy):
        s = strategy
    elif strategy in ("auto", "single_device", None):
        s = DDPStrategy() if devices * num_nodes > 1 else Strategy()
    elif strategy == "ddp":
        s = DDPStrategy()
    elif strategy == "ddp_find_unused_parameters_true":
        s = DDPStrategy(find_unused_parameters=True)
    elif strategy == "fsdp":
        s = FSDPStrategy()
    else:
        raise MisconfigurationException(f"strategy={strategy!r} is not supported; use 'auto', 'ddp' or a DDPStrategy")
    if isinstance(s, _ProcessGroupStrategy):
        s.configure(devices, num_nodes)
    elif devices * num_nodes > 1:
        raise MisconfigurationException(f"{type(s).__name__} runs one process; got devices={devices} x num_nodes={num_nodes}")
    return s
