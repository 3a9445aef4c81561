"""DDP and FSDP2 on torch.distributed with two gloo processes on the CPU: equal to one process
training on the full batches, started by the Trainer itself or by torchrun; FSDP2 clipping equal to
unsharded clipping; a dead rank is an error, not a hang. (Each test runs tests/ddp_child.py or
tests/fsdp_child.py as its own processes.)"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time

import ddp_child
import fsdp_child
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
CHILD = os.path.join(os.path.dirname(__file__), "ddp_child.py")
FSDP_CHILD = os.path.join(os.path.dirname(__file__), "fsdp_child.py")


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def check_against_single_process(mode: str, out: str) -> None:
    ref = ddp_child.reference(mode)
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1)]
    for rank in (0, 1):  # the group was torn down before interpreter finalization (see strategies.py)
        assert open(os.path.join(out, f"rank{rank}.exit")).read() == "destroyed=True\n"
    for r in ranks:
        assert r["world_size"] == 2 and r["global_step"] == ref["global_step"]
        for k, v in ref["state"].items():
            assert torch.equal(r["state"][k], ranks[0]["state"][k]), k  # replicas stay identical
            # the all-reduce sums in another order than one process does: a few fp32 ulps
            torch.testing.assert_close(r["state"][k], v, rtol=1e-5, atol=1e-6)
        # sync_dist=True: the mean of the two halves' losses is the full batch's loss
        for k in ("loss_step", "loss_epoch"):
            torch.testing.assert_close(r["metrics"][k], ref["metrics"][k], rtol=1e-5, atol=1e-6)
    moved = max((ranks[0]["state"][k] - ddp_child.Regressor(mode).state_dict()[k]).abs().max() for k in ref["state"])
    assert moved > 1e-3  # training did happen


@pytest.mark.parametrize("mode", ["manual", "automatic", "manual_no_sync"])
def test_ddp_two_processes_equal_one_on_the_full_batch(mode: str, tmp_path) -> None:
    out = str(tmp_path)
    proc = run([sys.executable, CHILD, mode, out])  # the Trainer starts rank 1 itself
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_against_single_process(mode, out)
    # rank zero alone writes logs and checkpoints, and prints the summary
    assert os.listdir(os.path.join(out, "lightning_logs")) == ["version_0"]
    ckpts = os.listdir(os.path.join(out, "lightning_logs", "version_0", "checkpoints"))
    assert len(ckpts) == 1 and ckpts[0].startswith("epoch=1-")
    assert proc.stderr.count("Total params") == 1  # the summary goes to the INFO log, as Lightning's


def test_ddp_under_torchrun(tmp_path) -> None:
    out = str(tmp_path)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(ddp_child_port()), CHILD, "manual", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_against_single_process("manual", out)


def ddp_child_port() -> int:
    from mopt_fast.trainer.strategies import _free_port

    return _free_port()


# What gloo raises on rank 0 when its peer's process is gone: the end of the connection seen in a
# read, or a write to it refused, depending on what rank 0 was doing at the moment.
PEER_GONE = re.compile(r"\[rank0\]: RuntimeError: \[[^\]]*gloo/transport/tcp/pair\.cc:\d+\] [^\n]*"
                       r"(Connection closed by peer|connection reset by peer|broken pipe)", re.IGNORECASE)


def test_a_dead_rank_is_an_error_not_a_hang(tmp_path) -> None:
    start = time.monotonic()
    proc = run([sys.executable, CHILD, "die", str(tmp_path)], timeout=120)
    assert proc.returncode == 1
    assert time.monotonic() - start < 90
    assert PEER_GONE.search(proc.stderr), proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(str(tmp_path), "rank0.pt"))


def test_a_rank_that_exits_before_joining_fails_rank_zero_at_once(tmp_path) -> None:
    """Rank 1 (started by rank 0) exits before it joins the process group, under the default
    30-minute timeout: rank 0 raises, naming the rank and its exit code, within seconds."""
    start = time.monotonic()
    proc = run([sys.executable, CHILD, "exit_before_fit", str(tmp_path)], timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1
    assert re.search(r"RuntimeError: DDP rank 1 \(pid \d+\) exited with code 3 before joining the process group",
                     proc.stderr), proc.stderr[-3000:]


def test_a_rank_that_exits_inside_init_process_group_stops_rank_zero(tmp_path) -> None:
    """Rank 1 checks in, then exits inside init_process_group, where rank 0 waits in C++ that no
    Python exception reaches: the launcher's watcher ends rank 0 with a message."""
    start = time.monotonic()
    proc = run([sys.executable, CHILD, "exit_in_init", str(tmp_path)], timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1
    assert re.search(r"mopt_fast: DDP rank 1 \(pid \d+\) exited with code 4 while the process group was being set "
                     r"up; stopping all ranks", proc.stderr), proc.stderr[-3000:]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread states from /proc (Linux)")
def test_exit_waits_while_a_gloo_worker_thread_is_busy() -> None:
    """The wait at exit (see strategies.py) returns only once every thread named as gloo's worker
    threads is asleep: here one that first computes without the GIL (as a worker releasing a
    finished collective runs C++), then waits for work."""
    from mopt_fast.trainer.strategies import _wait_until_gloo_threads_idle

    started, stop = threading.Event(), threading.Event()
    busy_until: list[float] = []

    def gloo_like_worker() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write("pt_gloo_runloop")
        started.set()
        hashlib.pbkdf2_hmac("sha256", b"busy", b"salt", 300_000)  # one call, GIL released throughout
        busy_until.append(time.monotonic())
        stop.wait()

    worker = threading.Thread(target=gloo_like_worker, daemon=True)
    worker.start()
    started.wait()
    start = time.monotonic()
    _wait_until_gloo_threads_idle()
    returned = time.monotonic()
    stop.set()
    worker.join()
    assert busy_until and returned > busy_until[0], (busy_until, returned)
    assert returned - start < 10


def test_fsdp2_clipping_equals_unsharded_clipping(tmp_path) -> None:
    """p = 2, inf, 1.5, 1 on uneven shards (one rank holds an empty shard): same total norm and
    same clipped gradients as torch's clip_grad_norm_ on the unsharded model, on every rank."""
    out = str(tmp_path)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(ddp_child_port()), FSDP_CHILD, "clip", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = open(os.path.join(out, f"clip{rank}.txt")).read()
        assert report.endswith("OK\n") and report.count("p=") == 8


def test_fsdp2_trainer_with_clipping_equals_one_process(tmp_path) -> None:
    out = str(tmp_path)
    proc = run([sys.executable, FSDP_CHILD, "train", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = fsdp_child.reference()
    for rank in (0, 1):
        got = torch.load(os.path.join(out, f"rank{rank}.pt"), weights_only=True)
        assert got["world_size"] == 2 and got["global_step"] == ref["global_step"]
        for k, v in ref["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6)
