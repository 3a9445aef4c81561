"""Preemption and faults: SIGTERM / SIGUSR1 during fit stop after the step in flight with an HPC
checkpoint and a non-zero exit, and the fit resumes bitwise (one process, and DDP with the signal
on one rank only); torchrun restarts a group whose rank was SIGKILLed and the fit resumes from
last.ckpt by itself; a rank that hangs is named by the collective timeout. Side by side with
Lightning where it defines the behaviour (SIGTERMException, on_exception, received_sigterm, the
handlers, hpc_ckpt_N.ckpt and ckpt_path="hpc"). The multi-process runs are tests/preempt_child.py.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
from torch import nn

import lightning_cases as cases
from helpers import importorskip_unless_ci

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not hasattr(signal, "SIGUSR1"),
                                reason="torch.distributed and POSIX signals")
CHILD = os.path.join(os.path.dirname(__file__), "preempt_child.py")
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in _LAUNCH_VARS:
        env.pop(var, None)
    return env


def run(out: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CHILD, out, *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env())


def run_and_signal(out: str, signum: int, rank: int, *args: str) -> subprocess.CompletedProcess:
    """The child, signalled when its rank `rank` says (OUT/reached<rank>) that it is inside the step."""
    proc = subprocess.Popen([sys.executable, CHILD, out, "--signal-rank", str(rank), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    marker = os.path.join(out, f"reached{rank}")
    deadline = time.monotonic() + 120
    while not os.path.exists(marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the child's file, bounded
    if os.path.exists(marker):
        os.kill(int(open(marker).read()), signum)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def equal(a: Any, b: Any) -> bool:
    """Bitwise equality of nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def final(out: str, rank: int = 0) -> dict[str, Any]:
    return torch.load(os.path.join(out, f"rank{rank}.pt"), weights_only=True)


def assert_same_run(out: str, reference: str, ranks: tuple[int, ...] = (0,)) -> None:
    for rank in ranks:
        got, want = final(out, rank), final(reference, rank)
        assert got["global_step"] == want["global_step"]
        assert equal(got["state"], want["state"]), f"rank {rank}: weights differ"
        assert equal(got["optimizer"], want["optimizer"]), f"rank {rank}: optimizer state differs"


@pytest.fixture(scope="module")
def reference_one(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("reference_one"))
    proc = run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference_ddp(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("reference_ddp"))
    proc = run(out, "--devices", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize(("signame", "resume"), [("SIGTERM", "hpc"), ("SIGUSR1", "last")])
def test_a_signal_stops_after_the_step_then_the_fit_resumes_bitwise(signame: str, resume: str, tmp_path,
                                                                    reference_one: str) -> None:
    signum = getattr(signal, signame)
    out = str(tmp_path)
    proc = run_and_signal(out, signum, 0, "--signal-step", "6")
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    # The signal came inside step 6: that step finished, then the checkpoint, the hooks, the exit.
    assert (f"mopt_fast: received {signame} during fit; stopped after global step 6 and saved "
            f"{os.path.join(out, 'hpc_ckpt_1.ckpt')}") in proc.stderr
    assert open(os.path.join(out, "on_exception0.txt")).read() == f"SIGTERMException {128 + signum} True 6\n"
    # The CSV logger writes its rows when it is finalized (no flush is due before step 100).
    rows = open(os.path.join(out, "csv", "version_0", "metrics.csv")).read().splitlines()
    assert [row.split(",")[-1] for row in rows[1:]] == [str(step) for step in range(6)]
    proc = run(out, "--resume", resume, "--reseed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {os.path.join(out, 'hpc_ckpt_1.ckpt')}" in proc.stderr
    assert "saved from inside the loop" not in proc.stderr  # at the batch's resume point, not an approximate one
    assert_same_run(out, reference_one)


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, reference_ddp: str) -> None:
    """Rank 1 alone gets SIGTERM inside step 3: the vote started after step 3 is read after step 4,
    so both ranks stop there, write one HPC checkpoint and exit with 143; resuming both from it
    gives the uninterrupted run."""
    out = str(tmp_path)
    proc = run_and_signal(out, signal.SIGTERM, 1, "--devices", "2", "--signal-step", "3")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert open(os.path.join(out, "on_exception0.txt")).read() == "SIGTERMException 143 False 4\n"
    assert open(os.path.join(out, "on_exception1.txt")).read() == "SIGTERMException 143 True 4\n"
    assert sorted(f for f in os.listdir(out) if f.startswith("hpc_")) == ["hpc_ckpt_1.ckpt"]
    proc = run(out, "--devices", "2", "--resume", "hpc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(out, reference_ddp, ranks=(0, 1))


def test_torchrun_restarts_a_killed_rank_and_the_fit_resumes_from_last(tmp_path, reference_ddp: str) -> None:
    """fit(ckpt_path="last") in the script: the first attempt finds no checkpoint (Lightning's
    warning) and starts afresh; rank 1 SIGKILLs itself at step 7; the agent restarts both ranks,
    which resume from the last.ckpt of step 6 and end as the uninterrupted run."""
    out = str(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts", "1", "--nproc-per-node",
           "2", CHILD, out, "--devices", "2", "--kill-step", "7", "--every", "2", "--resume", "last"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"failed \(exitcode: -9\) local_rank: 1", proc.stderr), proc.stderr[-3000:]
    assert '.fit(ckpt_path="last") is set, but there is no last checkpoint available' in proc.stderr
    assert f"Restored all states from the checkpoint at {os.path.join(out, 'ckpt', 'last.ckpt')}" in proc.stderr
    assert_same_run(out, reference_ddp, ranks=(0, 1))


def test_a_hung_rank_is_named_by_the_collective_timeout(tmp_path) -> None:
    """Rank 1 blocks for good inside step 5: rank 0's gradient all-reduce times out, and the error
    names rank 1 and the collective; the checkpoints written before stay loadable. (The run
    returning at all shows the hung rank is gone: it holds the same pipes.)"""
    out = str(tmp_path)
    proc = run(out, "--devices", "2", "--hang-step", "5", "--collective-timeout", "3", "--every", "1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert re.search(r"mopt_fast\.exceptions\.CollectiveTimeoutError: rank 1 did not join all_reduce of gradients "
                     r"\(in backward\) within 0:00:03 \(seen on rank 0;", proc.stderr), proc.stderr[-3000:]
    assert open(os.path.join(out, "on_exception0.txt")).read() == "CollectiveTimeoutError None False 4\n"
    from mopt_fast.core.saving import load_checkpoint

    assert load_checkpoint(os.path.join(out, "ckpt", "last.ckpt"))["global_step"] == 4


def test_under_torchrun_each_restart_has_its_own_store_prefix(monkeypatch) -> None:
    """torchrun's agent keeps its rendezvous store across restarts: what a restarted group publishes
    (gloo's addresses) goes under a prefix of its attempt, never read back from the attempt before."""
    import datetime

    import mopt_fast

    server = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    strategy = mopt_fast.DDPStrategy(timeout=datetime.timedelta(seconds=10))
    for attempt in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        store = strategy._elastic_attempt_store()
        assert store is not None
        store.set("rank_1", f"address of attempt {attempt}")
    assert server.get("mopt_fast/attempt_0/rank_1") == b"address of attempt 0"
    assert server.get("mopt_fast/attempt_1/rank_1") == b"address of attempt 1"
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert strategy._elastic_attempt_store() is None  # not under torchrun: torch's own env:// set-up


# -- side by side with Lightning, in this process ------------------------------------------------------------------
def _module_class(base: type) -> type:
    class SignalsItself(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the main thread, inside the step
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return SignalsItself


def _fit_with_sigterm(name: str, root: str) -> dict[str, Any]:
    pl = importorskip_unless_ci("lightning.pytorch")
    module_base, trainer_class = cases.frameworks(name)
    import mopt_fast

    callback_base = pl.Callback if name == "lightning" else mopt_fast.Callback
    seen: dict[str, Any] = {"exceptions": [], "user_handler": []}

    class Record(callback_base):  # type: ignore[misc, valid-type]
        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            seen["exceptions"].append((exception, trainer.received_sigterm, trainer.global_step))

    def user_handler(signum: int, frame: Any) -> None:
        seen["user_handler"].append(signum)

    previous = signal.signal(signal.SIGTERM, user_handler)
    try:
        torch.manual_seed(0)
        model = _module_class(module_base)()
        train, _ = cases.make_data()
        trainer = trainer_class(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                                default_root_dir=root)
        with pytest.raises(SystemExit) as info:
            trainer.fit(model, train)
        seen["handler_after"] = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    seen.update(exc=info.value, status=trainer.state.status.value, received=trainer.received_sigterm,
                global_step=trainer.global_step, weights=model.state_dict(), user_handler_fn=user_handler,
                files=sorted(os.listdir(root)) if os.path.isdir(root) else [])
    return seen


def test_sigterm_side_by_side_with_lightning(tmp_path) -> None:
    pl = importorskip_unless_ci("lightning.pytorch")
    theirs = _fit_with_sigterm("lightning", str(tmp_path / "lightning"))
    ours = _fit_with_sigterm("mopt_fast", str(tmp_path / "mopt_fast"))
    import mopt_fast

    for seen in (theirs, ours):
        # Lightning's SIGTERMException (ours is both classes when the script imported Lightning)
        assert isinstance(seen["exc"], pl.utilities.exceptions.SIGTERMException)
        assert [(e, r, s) for e, r, s in seen["exceptions"]] == [(seen["exc"], True, 4)]  # after the step in flight
        assert seen["status"] == "interrupted" and seen["received"] and seen["global_step"] == 4
        assert seen["user_handler"] == [signal.SIGTERM]  # the script's handler still ran
        assert seen["handler_after"] is seen["user_handler_fn"]  # and is back after fit
    assert isinstance(ours["exc"], mopt_fast.exceptions.SIGTERMException)
    assert equal(ours["weights"], theirs["weights"])
    # Differences: the exit status (Lightning's SystemExit carries none: status 0) and the checkpoint
    # (Lightning writes an HPC checkpoint only on SLURM with auto-requeue, from its SIGUSR1 handler).
    assert theirs["exc"].code is None and ours["exc"].code == 143
    assert theirs["files"] == [] and ours["files"] == ["hpc_ckpt_1.ckpt"]


def test_hpc_checkpoint_paths_as_lightning(tmp_path) -> None:
    """hpc_ckpt_{N+1}.ckpt is the next save, the highest N is what ckpt_path="hpc" loads, and with
    none ckpt_path="hpc" is Lightning's ValueError."""
    pl = importorskip_unless_ci("lightning.pytorch")
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    import mopt_fast
    from mopt_fast.trainer import _signals

    folder = str(tmp_path / "root")
    os.makedirs(folder)
    assert _signals.hpc_save_path(folder) == _CheckpointConnector.hpc_save_path(folder)
    for name in ("hpc_ckpt_1.ckpt", "hpc_ckpt_3.ckpt", "last.ckpt"):
        open(os.path.join(folder, name), "w").close()
    assert _signals.hpc_save_path(folder) == _CheckpointConnector.hpc_save_path(folder) == \
        os.path.join(folder, "hpc_ckpt_4.ckpt")
    trainer = pl.Trainer(default_root_dir=folder, logger=False)
    assert _signals.hpc_resume_path(folder) == trainer._checkpoint_connector._hpc_resume_path == \
        os.path.join(folder, "hpc_ckpt_3.ckpt")

    errors = []
    for name in ("lightning", "mopt_fast"):
        module_base, trainer_class = cases.frameworks(name)
        model = _module_class(module_base)()
        train, _ = cases.make_data()
        trainer = trainer_class(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(tmp_path / name))
        with pytest.raises(ValueError) as info:
            trainer.fit(model, train, ckpt_path="hpc")
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert mopt_fast.Trainer().received_sigterm is False


def test_what_a_killed_sharded_save_leaves_is_not_an_hpc_checkpoint(tmp_path) -> None:
    """A preemption save killed midway leaves `.hpc_ckpt_N.ckpt.partial` (and a replace, `.old`):
    neither is a checkpoint, so ckpt_path="hpc" takes the highest complete one."""
    from mopt_fast.trainer import _signals

    folder = str(tmp_path)
    open(os.path.join(folder, "hpc_ckpt_1.ckpt"), "w").close()
    for leftover in (".hpc_ckpt_2.ckpt.partial", ".hpc_ckpt_1.ckpt.old"):
        os.makedirs(os.path.join(folder, leftover))
    assert _signals.hpc_resume_path(folder) == os.path.join(folder, "hpc_ckpt_1.ckpt")
    assert _signals.hpc_save_path(folder) == os.path.join(folder, "hpc_ckpt_2.ckpt")


def test_only_a_collectives_timeout_is_explained(monkeypatch) -> None:
    """A timeout raised outside torch.distributed (a DataLoader's) is left as it is; one raised from a
    collective becomes CollectiveTimeoutError naming it."""
    import datetime

    from mopt_fast.exceptions import CollectiveTimeoutError
    from mopt_fast.trainer import _signals

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(_signals, "missing_ranks", lambda rank, world_size, grace: [1])
    timeout = datetime.timedelta(seconds=3)

    def data_loader_next():
        raise RuntimeError("DataLoader timed out after 5 seconds")

    def all_reduce():
        raise RuntimeError("[gloo] Timed out waiting 3000ms for recv operation to complete")

    for raising, expected in ((data_loader_next, None), (all_reduce, "rank 1 did not join all_reduce within 0:00:03")):
        try:
            raising()
        except RuntimeError as error:
            explained = _signals.explain_timeout(error, 0, 2, timeout)
        if expected is None:
            assert explained is None
        else:
            assert isinstance(explained, CollectiveTimeoutError) and expected in str(explained)


def test_a_signal_after_the_last_batch_is_raised_again_after_fit(tmp_path) -> None:
    """The fit has no batch left to stop after: it completes, then the signal is raised again with
    the handlers restored, so its default action (ending the process) is not lost."""
    script = tmp_path / "late_signal.py"
    script.write_text(
        "import os, signal, sys, torch\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import lightning_cases as cases\n"
        "import mopt_fast\n"
        "class Late(mopt_fast.Callback):\n"
        "    def on_train_end(self, trainer, module):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        print('signalled', flush=True)\n"
        "module_base, trainer_class = cases.frameworks('mopt_fast')\n"
        "class M(module_base):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.layer = torch.nn.Linear(8, 1)\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "train, _ = cases.make_data()\n"
        "trainer = trainer_class(accelerator='cpu', max_epochs=1, logger=False, enable_progress_bar=False,\n"
        "                        enable_model_summary=False, enable_checkpointing=False, callbacks=[Late()])\n"
        "trainer.fit(M(), train)\n"
        "print('after fit', flush=True)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert "signalled" in proc.stdout and "after fit" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == -signal.SIGTERM
