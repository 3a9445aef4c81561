"""Several nodes: two torchrun agents on this machine stand for two nodes of two gloo processes
each, started with README's multi-node command (`RECIPE`, section "Several nodes"), and
`Trainer(strategy="ddp" / "fsdp", devices=2, num_nodes=2)` in tests/multinode_child.py.

One launch runs the four fits (DDP and FSDP, automatic then manual optimization, one after the
other in the same process group): starting 4 processes on 2 cores costs more than the fits.
Each fit ends with the weights of one process training on the full batches (a few fp32 ulps: the
all-reduce sums in another order), identical on the 4 ranks; each rank reads its node, local and
global rank from torchrun's environment (GROUP_RANK, LOCAL_RANK, RANK); logs and checkpoints are
written by global rank 0 alone, `prepare_data` runs on local rank 0 of each node (or global rank 0
with ``prepare_data_per_node = False``), as in Lightning.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import string
import subprocess
import sys
import time
import uuid
from typing import Any

import ddp_child
import pytest
import torch

import mopt_fast
from mopt_fast.exceptions import NotBuiltError

from helpers import importorskip_unless_ci
from lightning_cases import frameworks

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
needs_proc = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="finds the rendezvous host in /proc (Linux)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(os.path.dirname(__file__), "multinode_child.py")
# The command README.md shows, run here as it is on each of the two "nodes", with $HEAD_NODE,
# $PORT and $JOB_ID filled in, torchrun as `python -m torch.distributed.run`, train.py as the child.
RECIPE = ("torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint $HEAD_NODE:$PORT "
          "--rdzv-id $JOB_ID train.py")
STRATEGIES = ("ddp", "fsdp")
MODES = ("automatic", "manual")
NODES, DEVICES = 2, 2
WORLD = NODES * DEVICES
LAUNCH_TIMEOUT = 300  # seconds for one launch (about 35 s alone on 2 cores)
LAUNCH_TRIES = 3  # a port the OS gave out may be taken before node 0's agent listens on it


def command(port: int, job_id: str, out: str) -> list[str]:
    filled = string.Template(RECIPE).substitute(HEAD_NODE="127.0.0.1", PORT=port, JOB_ID=job_id)
    argv = shlex.split(filled)
    assert argv[0] == "torchrun" and argv[-1] == "train.py"
    return [sys.executable, "-m", "torch.distributed.run", *argv[1:-1], CHILD, ",".join(STRATEGIES), out]


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP `port` (IPv4 or IPv6), from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def wait_until_hosting(agent: subprocess.Popen, port: int) -> bool:
    """Whether `agent` came to host the rendezvous store on `port`. False when another process
    listens there (taken since the OS gave the port out: the agent would wait on a stranger), or
    the agent exited first."""
    deadline = time.monotonic() + 60
    while agent.poll() is None and time.monotonic() < deadline:
        listening = listening_sockets(port)
        if listening:
            return bool(listening & socket_inodes(agent.pid))
        time.sleep(0.05)  # polls a condition with a deadline; synchronizes nothing
    return False


def launch_two_nodes(out: str) -> bool:
    """Node 0's agent, then (once it hosts the rendezvous on the port) node 1's, each in its own
    session (a timeout ends an agent and its workers), their output in OUT/node<n>.log; False
    when the port was taken by another process (then nothing else was started)."""
    from mopt_fast.trainer.strategies import _free_port

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(var, None)
    port = _free_port()
    argv = command(port, uuid.uuid4().hex[:8], out)
    agents: list[subprocess.Popen] = []
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        for node in range(NODES):
            with open(os.path.join(out, f"node{node}.log"), "w") as log:
                agents.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))
            if node == 0 and not wait_until_hosting(agents[0], port):
                if agents[0].poll() is None:
                    return False
                break  # node 0's agent failed: its log says why
        for agent in agents:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed below, reported as failed
                agent.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    failed = [(n, a.returncode) for n, a in enumerate(agents) if a.returncode != 0]
    logs = "\n".join(open(os.path.join(out, f"node{n}.log")).read()[-3000:] for n, _ in failed)
    assert not failed, f"agents (node, exit code) {failed}:\n{logs}"
    return True


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> str:
    for attempt in range(LAUNCH_TRIES):
        out = str(tmp_path_factory.mktemp(f"multinode{attempt}"))
        if launch_two_nodes(out):
            return out
    raise AssertionError(f"the rendezvous port was taken by another process {LAUNCH_TRIES} times in a row")


@functools.cache
def reference(mode: str) -> dict:
    return ddp_child.reference(mode)


def load(out: str, strategy: str, mode: str) -> list[dict]:
    return [torch.load(os.path.join(out, strategy, mode, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]


@needs_proc
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_nodes_equal_one_process_on_the_full_batch(launched: str, strategy: str, mode: str) -> None:
    ranks = load(launched, strategy, mode)
    ref = reference(mode)
    for got in ranks:
        assert got["global_step"] == ref["global_step"]
        for k, v in ref["state"].items():
            assert torch.equal(got["state"][k], ranks[0]["state"][k]), k  # replicas stay identical
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6)
        for k in ("loss_step", "loss_epoch"):  # sync_dist=True over the 4 ranks: the full batch's loss
            torch.testing.assert_close(got["metrics"][k], ref["metrics"][k], rtol=1e-5, atol=1e-6)
    moved = max((ranks[0]["state"][k] - ddp_child.Regressor(mode).state_dict()[k]).abs().max() for k in ref["state"])
    assert moved > 1e-3  # training did happen


@needs_proc
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ranks_come_from_torchrun(launched: str, strategy: str, mode: str) -> None:
    seen = set()
    for r, got in enumerate(load(launched, strategy, mode)):
        env = got["env"]
        expected = {"node_rank": env["GROUP_RANK"], "local_rank": env["LOCAL_RANK"], "global_rank": r,
                    "world_size": WORLD}
        assert got["trainer"] == expected and got["strategy"] == expected
        assert env["RANK"] == r and env["WORLD_SIZE"] == WORLD and env["LOCAL_WORLD_SIZE"] == DEVICES
        assert r == env["GROUP_RANK"] * DEVICES + env["LOCAL_RANK"]
        assert (got["module_global_rank"], got["module_local_rank"]) == (r, env["LOCAL_RANK"])
        assert got["is_global_zero"] == (r == 0)
        assert (got["num_nodes"], got["num_devices"]) == (NODES, DEVICES)
        seen.add((env["GROUP_RANK"], env["LOCAL_RANK"]))
    assert seen == {(n, d) for n in range(NODES) for d in range(DEVICES)}


@needs_proc
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_global_rank_zero_writes_and_each_node_prepares_data(launched: str, strategy: str, mode: str) -> None:
    run_dir = os.path.join(launched, strategy, mode)
    rank_zero_pid = load(launched, strategy, mode)[0]["pid"]
    logs = os.path.join(run_dir, "lightning_logs")
    assert os.listdir(logs) == ["version_0"]
    events = [f for f in os.listdir(os.path.join(logs, "version_0")) if f.startswith("events.out.tfevents.")]
    assert len(events) == 1 and events[0].split(".")[-2] == str(rank_zero_pid)  # ...<host>.<pid>.<n>
    written = sorted(f for f in os.listdir(run_dir) if f.startswith(("prepared.", "saved_by.")))
    prepared = ["prepared.0", "prepared.2"] if mode == "automatic" else ["prepared.0"]  # local rank 0 per node
    if strategy == "ddp":  # FSDP runs without checkpoints here
        ckpts = os.listdir(os.path.join(logs, "version_0", "checkpoints"))
        assert len(ckpts) == 1 and ckpts[0].startswith("epoch=1-")
        assert written == [*prepared, "saved_by.0"]
    else:
        assert written == prepared
    for r in range(WORLD):  # the group was torn down before interpreter finalization (see strategies.py)
        assert open(os.path.join(launched, f"rank{r}.exit")).read() == "destroyed=True\n"


def test_docs_show_the_command_these_tests_run() -> None:
    with open(os.path.join(ROOT, "docs", "distributed.md")) as f:
        page = f.read()
    section = page.split("\n## Several nodes", 1)
    assert len(section) == 2, "docs/distributed.md has no section '## Several nodes'"
    # a shell line continuation (a backslash, then a newline) and runs of spaces read as one space
    shown = " ".join(section[1].split("\n## ", 1)[0].replace("\\\n", " ").split())
    assert RECIPE in shown, f"docs/distributed.md's 'Several nodes' section does not show the command tests run: {RECIPE}"


def linear_module(base: type) -> Any:
    class Linear(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Linear()


def test_a_world_size_other_than_devices_times_nodes_is_lightnings_value_error(monkeypatch, tmp_path) -> None:
    """torchrun's WORLD_SIZE 3 for devices=2 x num_nodes=2: Lightning's ValueError from fit, in
    both Trainers, before any process group exists."""
    importorskip_unless_ci("lightning")
    from mopt_fast.trainer.strategies import _free_port

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # how Lightning recognises torchrun
    for var, value in (("RANK", 0), ("LOCAL_RANK", 0), ("GROUP_RANK", 0), ("WORLD_SIZE", 3), ("LOCAL_WORLD_SIZE", 2),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", _free_port())):
        monkeypatch.setenv(var, str(value))
    errors = {}
    for name in ("lightning", "mopt_fast"):
        module_base, trainer_cls = frameworks(name)
        model = linear_module(module_base)
        trainer = trainer_cls(accelerator="cpu", strategy="ddp", devices=2, num_nodes=2, max_epochs=1, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                              default_root_dir=str(tmp_path))
        with pytest.raises(ValueError) as info:
            trainer.fit(model, ddp_child.data(4))
        errors[name] = str(info.value)
    assert not torch.distributed.is_initialized()
    assert errors["mopt_fast"] == errors["lightning"]
    assert errors["lightning"] == ("You set `devices=2` and `num_nodes=2` in Lightning, but the product (2 * 2) does "
                                   "not match the world size (3).")


def test_several_nodes_without_torchrun_is_not_built(monkeypatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2, max_epochs=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NotBuiltError, match=r"num_nodes > 1 without torchrun .* torchrun on every node"):
        trainer.fit(ddp_child.Regressor("automatic"), ddp_child.data(4))
    assert not torch.distributed.is_initialized()
