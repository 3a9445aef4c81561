"""Sharded checkpoints under ``strategy="fsdp"`` (torch.distributed.checkpoint): a 2-rank fit
stopped and resumed from ``ckpt_path="last"`` (written asynchronously) ends bitwise equal to the
uninterrupted one; ModelCheckpoint rotates folders; a 1-rank checkpoint resumes on 2 ranks and a
2-rank one in one process, with the same weights and optimizer state; one process reads a folder
whole (load_checkpoint, load_from_checkpoint, consolidate_checkpoint, and Lightning reads the
consolidated file); a save that fails midway on one rank leaves the previous checkpoint loadable.
(The multi-rank runs are tests/fsdp_ckpt_child.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsdp_ckpt_child as child
import pytest
import torch

import mopt_fast
from mopt_fast.core.saving import load_checkpoint
from mopt_fast.utilities.consolidate_checkpoint import consolidate_checkpoint

from helpers import importorskip_unless_ci

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
CHILD = os.path.join(os.path.dirname(__file__), "fsdp_ckpt_child.py")


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_same_state(got_model: dict, got_optim: dict, want_model: dict, want_optim: dict) -> None:
    """Bitwise equal weights and optimizer states (keyed by parameter name), same hyperparameters."""
    assert got_model.keys() == want_model.keys()
    for k, v in want_model.items():
        assert torch.equal(got_model[k], v), k
    assert got_optim["state"].keys() == want_optim["state"].keys()
    for name, state in want_optim["state"].items():
        assert got_optim["state"][name].keys() == state.keys(), name
        for key, v in state.items():
            assert torch.equal(got_optim["state"][name][key], v), (name, key)
    assert got_optim["param_groups"] == want_optim["param_groups"]


def by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A one-process optimizer's state_dict keyed by parameter name, as the sharded one is."""
    names = {p: n for n, p in model.named_parameters()}
    order = [names[p] for g in optimizer.param_groups for p in g["params"]]
    sd = optimizer.state_dict()
    return {"state": {order[i]: v for i, v in sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("fsdp_ckpt"))
    proc = run(CHILD, "one", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    consolidate_checkpoint(os.path.join(out, "one.ckpt"))  # -> one.ckpt.consolidated
    os.rename(os.path.join(out, "one.ckpt.consolidated"), os.path.join(out, "one.consolidated.ckpt"))
    proc = run(CHILD, "main", out)  # resumes what "one" wrote
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_two_rank_resume_from_last_is_bitwise_the_uninterrupted_fit(runs: str) -> None:
    for rank in (0, 1):
        ref = torch.load(os.path.join(runs, f"ref{rank}.pt"), weights_only=True)
        resumed = torch.load(os.path.join(runs, f"resumed{rank}.pt"), weights_only=True)
        assert ref["global_step"] == resumed["global_step"] == child.STEPS
        assert resumed["batches_run"] == child.STEPS - child.STOP  # it did resume
        assert_same_state(resumed["model"], resumed["optim"], ref["model"], ref["optim"])
    assert ref["optim"]["param_groups"][0]["lr"] == 0.02 * 0.5 ** (child.STEPS // 3)  # the scheduler was resumed
    moved = (ref["model"]["net.0.weight"] - child.Net().net[0].weight).abs().max()
    assert moved > 1e-3


def test_model_checkpoint_rotates_sharded_folders(runs: str) -> None:
    """save_top_k=2 (by step) and save_last: after the resumed fit, steps 8 and 10 and last; each a
    folder holding one shard file per rank and meta.pt, and no partial folder left behind."""
    folder = os.path.join(runs, "ckpts")
    assert sorted(os.listdir(folder)) == ["last.ckpt", "step=10.ckpt", "step=8.ckpt"]
    for name in os.listdir(folder):
        files = sorted(os.listdir(os.path.join(folder, name)))
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"], (name, files)
    last = load_checkpoint(os.path.join(folder, "last.ckpt"))
    assert last["global_step"] == child.STEPS and last["state_dict"]["net.0.weight"].shape == (24, 8)


def test_one_rank_checkpoint_resumes_on_two_ranks(runs: str) -> None:
    whole = load_checkpoint(os.path.join(runs, "one.ckpt"))  # one process, no process group
    assert whole["global_step"] == 3
    for rank in (0, 1):
        got = torch.load(os.path.join(runs, f"from_one{rank}.pt"), weights_only=True)
        assert got["world_size"] == 2 and got["global_step"] == 3 and got["batches_run"] == 0
        assert_same_state(got["model"], got["optim"], whole["state_dict"], whole["optimizer_states"][0])


def test_single_file_checkpoints_resume_on_two_ranks(runs: str) -> None:
    """A one-process Trainer's file (optimizer states keyed by index) and a consolidated folder
    (keyed by name) resume under FSDP on two ranks: each rank keeps its shard of the full tensors."""
    plain_model = child.Net()
    plain = load_checkpoint(os.path.join(runs, "plain.ckpt"))
    plain_model.load_state_dict(plain["state_dict"])
    optimizer = plain_model.configure_optimizers()["optimizer"]
    optimizer.load_state_dict(plain["optimizer_states"][0])
    consolidated = load_checkpoint(os.path.join(runs, "one.consolidated.ckpt"))
    for name, want_model, want_optim in [
        ("plain", plain["state_dict"], by_name(plain_model, optimizer)),
        ("one.consolidated", consolidated["state_dict"], consolidated["optimizer_states"][0]),
    ]:
        for rank in (0, 1):
            got = torch.load(os.path.join(runs, f"from_{name}{rank}.pt"), weights_only=True)
            assert got["world_size"] == 2 and got["global_step"] == 3 and got["batches_run"] == 0
            assert_same_state(got["model"], got["optim"], want_model, want_optim)


def test_two_rank_checkpoint_resumes_in_one_process(runs: str) -> None:
    """A plain one-process Trainer (no process group) resumes a 2-rank folder: the same weights and
    optimizer state as the folder read whole."""
    path = os.path.join(runs, "ckpts", "step=8.ckpt")
    whole = load_checkpoint(path)
    model = child.Net()
    trainer = mopt_fast.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, child.data(16), ckpt_path=path)
    assert trainer.global_step == 8
    assert_same_state(model.state_dict(), by_name(model, trainer.optimizers[0]), whole["state_dict"],
                      whole["optimizer_states"][0])


def test_consolidated_checkpoint_loads_in_both_frameworks(runs: str, tmp_path) -> None:
    folder = os.path.join(runs, "ckpts", "step=8.ckpt")
    whole = load_checkpoint(folder)
    model = child.Net.load_from_checkpoint(folder)  # straight from the folder, in one process
    for k, v in whole["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k
    out = str(tmp_path / "step=8.consolidated.ckpt")
    proc = run("-m", "mopt_fast.utilities.consolidate_checkpoint", folder, "--output_file", out)
    assert proc.returncode == 0 and proc.stdout.strip() == out, proc.stderr[-3000:]
    with pytest.raises(FileExistsError, match="exists already"):
        consolidate_checkpoint(folder, out)
    single = load_checkpoint(out)  # checksummed as every single-file checkpoint
    assert single["global_step"] == 8 and "mopt_fast" in single
    assert_same_state(single["state_dict"], single["optimizer_states"][0], whole["state_dict"],
                      whole["optimizer_states"][0])
    model = child.Net()
    trainer = mopt_fast.Trainer(accelerator="cpu", max_steps=9, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, child.data(16), ckpt_path=out)  # our Trainer resumes the file
    assert trainer.global_step == 9

    importorskip_unless_ci("lightning")
    import lightning.pytorch as pl

    class LightningNet(pl.LightningModule):
        def __init__(self, hidden: int = 24) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    theirs = LightningNet.load_from_checkpoint(out)
    for k, v in whole["state_dict"].items():
        assert torch.equal(theirs.state_dict()[k], v), k
    # What Lightning's own tool (python -m lightning.pytorch.utilities.consolidate_checkpoint) writes
    # from our folder: a file that both frameworks read
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    lightning_out = str(tmp_path / "by_lightning.ckpt")
    torch.save(_format_checkpoint(_load_distributed_checkpoint(Path(folder))), lightning_out)
    theirs = LightningNet.load_from_checkpoint(lightning_out)
    ours = load_checkpoint(lightning_out)  # meta.pt's checksum checked over what meta.pt held
    assert ours["global_step"] == 8
    assert_same_state(ours["state_dict"], ours["optimizer_states"][0], whole["state_dict"],
                      whole["optimizer_states"][0])
    for k, v in whole["state_dict"].items():
        assert torch.equal(theirs.state_dict()[k], v), k


def test_sharded_folder_refusals(runs: str, tmp_path) -> None:
    """A folder without DCP's metadata, a resume with another number of optimizers, a consolidation
    into an existing file: clear errors, and nothing on disk changes."""
    folder = os.path.join(runs, "ckpts", "step=8.ckpt")
    before = {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)}
    broken = tmp_path / "broken.ckpt"
    broken.mkdir()
    (broken / "meta.pt").write_bytes(open(os.path.join(folder, "meta.pt"), "rb").read())
    with pytest.raises(ValueError, match="not a complete sharded checkpoint: it has a meta.pt but no DCP"):
        load_checkpoint(str(broken))

    class TwoOptimizers(child.Net):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]

        def training_step(self, batch, batch_idx):
            return None

    model = TwoOptimizers()
    model.automatic_optimization = False
    trainer = mopt_fast.Trainer(accelerator="cpu", max_steps=9, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"holds 1 optimizer\(s\) and 1 scheduler\(s\); configure_optimizers gave 2"):
        trainer.fit(model, child.data(16), ckpt_path=folder)
    assert {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)} == before


def test_a_save_failing_midway_leaves_the_previous_checkpoint(tmp_path) -> None:
    """Rank 1's shard writer raises in the second save of last.ckpt: both ranks fail with DCP's
    error, and last.ckpt is still the first save, whole (no partial folder left)."""
    out = str(tmp_path)
    proc = run(CHILD, "fail", out)
    assert proc.returncode != 0
    error = open(os.path.join(out, "fail0.txt")).read()
    assert error.startswith("CheckpointException") and "disk full (injected)" in error, error
    folder = os.path.join(out, "fail")
    assert sorted(os.listdir(folder)) == ["last.ckpt"]
    last = load_checkpoint(os.path.join(folder, "last.ckpt"))
    assert last["global_step"] == 1
