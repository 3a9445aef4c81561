"""One collective per step under FSDP2: the gradient norm's partial sums, found_inf and the
non-finite-loss flag in ONE all-reduce, on two gloo processes (tests/packed_child.py).

Collectives are counted by wrapping torch.distributed's functions, by name: FSDP2's own
all-gather and reduce-scatter are counted apart from the all-reduce."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import packed_child
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
CHILD = os.path.join(os.path.dirname(__file__), "packed_child.py")
FSDP_OWN = {"all_gather_single": 1, "reduce_scatter_single": 1}  # one FSDP group's per step: not ours


def run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_functional_unscale_clip_on_shards_is_one_all_reduce(tmp_path) -> None:
    """mopt_fast.unscale_clip_grad_norm_ over FSDP2's DTensor gradients, p = 2 and inf: one
    all-reduce, no host read; norm and clipped gradients equal torch's unscale + clip on the
    unsharded gradients; a NaN in rank 1's shard, or an inf loss on rank 0 alone, sets found_inf
    on BOTH ranks and leaves every gradient as it was. Then GradScaler.unscale_clip_grad_norm_
    with torch's fused Adam (the clip factor handed to the optimizer): one all-reduce per step,
    and a NaN in rank 1's shard skips the step on both ranks; the same with mopt_fast.StepGuard
    (fused Adam, and foreach AdamW put back shard by shard)."""
    out = str(tmp_path)
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                CHILD, "functional", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        cases = json.load(open(os.path.join(out, f"functional{rank}.json")))
        scaler_steps = [cases.pop(f"scaler fused step {i}") for i in range(3)]
        mixed = cases.pop("elementwise on a partly sharded model")
        assert mixed == {"kinds": ["DTensor", "Tensor"], "equal_to_torch": True}, mixed
        for optimizer in ("fused", "foreach"):
            # StepGuard: a NaN in rank 1's shard at step 1 skips that step on both ranks, in one
            # all-reduce per step, adding no host read to the optimizer's own
            guarded = [cases.pop(f"guard {optimizer} step {i}") for i in range(3)]
            assert [all(s["changed"]) for s in guarded] == [True, False, True], (rank, optimizer, guarded)
            assert [any(s["changed"]) for s in guarded] == [True, False, True], (rank, optimizer, guarded)
            assert [s["skipped"] for s in guarded] == [0.0, 1.0, 1.0], (rank, optimizer, guarded)
            for s in guarded:
                assert s["collectives"] == {"all_reduce": 1} and s["host_reads_added"] == 0 and s["finite"], s
        assert len(cases) == 8
        for name, row in cases.items():
            assert row["collectives"] == {"all_reduce": 1}, (rank, name, row)
            assert row["host_reads"] == 0, (rank, name, row)
            if name.endswith(("finite", "noclip")):
                assert row["found_inf"] == 0.0 and row["equal_to_unsharded"], (rank, name, row)
            else:
                assert row["found_inf"] == 1.0 and row["untouched"], (rank, name, row)
            # the NaN of one rank's shard makes the global norm NaN (for p = inf too: MAX may drop it)
            assert row["total_is_nan"] == name.endswith("nan_on_rank1"), (rank, name, row)
        # GradScaler + fused Adam: a NaN in rank 1's shard at step 1 skips it on both ranks
        assert [all(s["changed"]) for s in scaler_steps] == [True, False, True], scaler_steps
        assert [any(s["changed"]) for s in scaler_steps] == [True, False, True], scaler_steps
        assert [s["scale"] for s in scaler_steps] == [256.0, 128.0, 128.0], scaler_steps
    for rank in (0, 1):
        cases = json.load(open(os.path.join(out, f"functional{rank}.json")))
        for i in range(3):
            assert cases[f"scaler fused step {i}"]["collectives"] == {"all_reduce": 1}, cases
            assert cases[f"scaler fused step {i}"]["clip_host_reads"] == 0, cases


def run_trainer(tmp_path, *args: str) -> list[list[dict]]:
    out = str(tmp_path)
    proc = run([sys.executable, CHILD, "trainer", out, *args])  # the Trainer starts rank 1 itself
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.load(open(os.path.join(out, f"trainer{rank}.json"))) for rank in (0, 1)]


def check_against_one_process(tmp_path, precision: str, faults: bool, rtol: float, atol: float,
                              nan_fault: bool = True) -> None:
    ref = packed_child.reference(precision, faults, nan_fault)
    for rank in (0, 1):
        got = torch.load(os.path.join(str(tmp_path), f"trainer{rank}.pt"), weights_only=True)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=rtol, atol=atol)


def test_trainer_fsdp_clip_step_is_one_all_reduce_and_equals_one_process(tmp_path) -> None:
    """Trainer(strategy=FSDPStrategy, devices=2, gradient_clip_val) per training batch: FSDP2's
    all-gather and reduce-scatter, and ONE all-reduce (the norm's); the weights equal one
    process on the full batches."""
    for steps in run_trainer(tmp_path, "--precision", "32-true"):
        assert len(steps) == packed_child.BATCHES
        for step in steps:
            assert step["collectives"] == {**FSDP_OWN, "all_reduce": 1}, step
            assert all(step["changed"]), step
    # the reduce-scatter sums in another order than one process: a few ulps
    check_against_one_process(tmp_path, "32-true", False, rtol=1e-5, atol=1e-6)


def test_trainer_fsdp_16_mixed_one_all_reduce_and_every_rank_skips_alike(tmp_path) -> None:
    """16-mixed (the plugin given, with skip_nonfinite_loss) under FSDP2 with clipping: ONE
    all-reduce per step carries the norm and found_inf, though unscale_() runs before the clip
    (for the hooks). A NaN in rank 1's gradient shard only (step 1), and an inf loss with finite
    gradients on rank 0 only (step 3): BOTH ranks skip that step (no shard changes anywhere) and
    back off the scale alike; the weights equal one process meeting the same faults."""
    ranks = run_trainer(tmp_path, "--precision", "16-mixed", "--faults")
    skipped = {packed_child.NAN_STEP, packed_child.LOSS_STEP}
    for steps in ranks:
        assert len(steps) == packed_child.BATCHES
        assert [any(s["changed"]) for s in steps] == [i not in skipped for i in range(len(steps))], steps
        assert [all(s["changed"]) for s in steps] == [i not in skipped for i in range(len(steps))], steps
        assert [s["scale"] for s in steps] == [256.0, 128.0, 128.0, 64.0, 64.0, 64.0], steps
    for steps in ranks:
        assert all(s["collectives"] == {**FSDP_OWN, "all_reduce": 1} for s in steps), steps
    # fp16 matmuls on half batches round otherwise than on full ones
    check_against_one_process(tmp_path, "16-mixed", True, rtol=1e-3, atol=1e-5)


def test_trainer_ddp_16_mixed_adds_one_all_reduce_only_for_the_loss_flag(tmp_path) -> None:
    """DDP: the gradients are all-reduced (by DDP's reducer, in C++: not counted here) before
    they are unscaled, so found_inf is the same on every rank and needs no collective; the loss
    is per rank, so skip_nonfinite_loss adds ONE all-reduce of the flags per step. An inf loss on
    rank 0 only (finite gradients): both ranks skip that step, alike."""
    ranks = run_trainer(tmp_path, "--precision", "16-mixed", "--faults", "--strategy", "ddp")
    for steps in ranks:
        assert [any(s["changed"]) for s in steps] == [i != packed_child.LOSS_STEP for i in range(len(steps))], steps
        assert [s["scale"] for s in steps] == [256.0, 256.0, 256.0, 128.0, 128.0, 128.0], steps
    for steps in ranks:
        assert all(s["collectives"] == {"all_reduce": 1} for s in steps), steps
    check_against_one_process(tmp_path, "16-mixed", True, rtol=1e-3, atol=1e-5, nan_fault=False)


def test_functional_loss_flag_in_one_process_sets_found_inf_and_leaves_grads() -> None:
    """unscale_clip_grad_norm_(loss=...) without a process group: an inf loss with finite
    gradients sets found_inf and leaves the (scaled) gradients as they were; a finite one does not."""
    import mopt_fast

    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.empty(5, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 512
    before = [p.grad.clone() for p in params]
    found = torch.zeros(())
    mopt_fast.unscale_clip_grad_norm_(params, 0.1, torch.full((), 1 / 512), found, loss=torch.tensor(float("inf")))
    assert found.item() == 1.0
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    found = torch.zeros(())
    mopt_fast.unscale_clip_grad_norm_(params, 1e9, torch.full((), 1 / 512), found, loss=torch.tensor(0.5))
    assert found.item() == 0.0
    assert all(torch.allclose(p.grad, b / 512) for p, b in zip(params, before))


def test_skip_nonfinite_loss_without_a_loss_scaler_is_not_built() -> None:
    from mopt_fast.exceptions import NotBuiltError
    from mopt_fast.plugins import MixedPrecision

    with pytest.raises(NotBuiltError, match=r"skip_nonfinite_loss=True\) is not built in mopt_fast"):
        MixedPrecision("bf16-mixed", "cpu", skip_nonfinite_loss=True)
