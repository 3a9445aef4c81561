"""``self.log(..., sync_dist=True, sync_dist_group=group)`` under two DDP ranks (gloo on the CPU,
tests/sync_dist_group_child.py): the step and epoch values Lightning logs, for a group of each rank
alone and a group of both.

Lightning's semantics (lightning/pytorch/trainer/connectors/logger_connector/result.py and
lightning/fabric/utilities/distributed.py's _sync_ddp): the step value is the logged value
all-reduced over the group with the reduce_fx's op, "mean" dividing the sum by the group's size;
the epoch value of a "mean" is the group's sum of (value x batch size) over the group's summed
batch sizes, of "sum" the group's sum of the ranks' sums, of "max" the group's max.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sync_dist_group_child as child
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
CHILD = os.path.join(os.path.dirname(__file__), "sync_dist_group_child.py")
WORLD = 2


def rank_batches(rank: int) -> list[torch.Tensor]:
    """Rank `rank`'s batches of one epoch: DistributedSampler without shuffling takes every
    WORLD-th sample from `rank` on."""
    x = child.dataset().tensors[0][rank::WORLD]
    return list(x.split(child.BATCH))


def lightning_expectation() -> tuple[list[dict[str, list[float]]], dict[str, list[float]]]:
    """Per rank: the step values (a list per name, one per training step) and the last epoch's values."""
    values = [[child.logged_value(x, r) for x in rank_batches(r)] for r in range(WORLD)]  # values[rank][step]
    sizes = [[len(x) for x in rank_batches(r)] for r in range(WORLD)]
    groups = {"own": lambda r: [r], "both": lambda r: [0, 1], "world": lambda r: [0, 1]}
    steps: list[dict[str, list[float]]] = [{} for _ in range(WORLD)]
    epoch: list[dict[str, float]] = [{} for _ in range(WORLD)]
    for r in range(WORLD):
        for name in child.NAMES:
            group = groups[name.split("_")[0]](r)
            fx = name.split("_")[1] if "_" in name else "mean"
            per_step = []
            for t in range(len(values[r])):
                vs = torch.stack([values[g][t] for g in group])
                per_step.append({"mean": vs.sum() / len(group), "sum": vs.sum(), "max": vs.max()}[fx].item())
            steps[r][name] = per_step * child.EPOCHS
            if fx == "mean":
                weighted = sum(float(values[g][t] * sizes[g][t]) for g in group for t in range(len(values[g])))
                epoch[r][name] = weighted / sum(sum(sizes[g]) for g in group)
            elif fx == "sum":
                epoch[r][name] = sum(float(v) for g in group for v in values[g])
            else:
                epoch[r][name] = max(float(v) for g in group for v in values[g])
    return steps, epoch


def test_sync_dist_group_logs_what_lightning_logs(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, CHILD, str(tmp_path)], capture_output=True, text=True, timeout=180,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, epoch = lightning_expectation()
    for r in range(WORLD):
        assert open(os.path.join(tmp_path, f"rank{r}.exit")).read() == "destroyed=True\n"
        got = torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=True)
        assert len(got["steps"]) == len(steps[r]["own"])
        for name in child.NAMES:
            got_steps = [s[f"{name}_step"].item() for s in got["steps"]]
            torch.testing.assert_close(got_steps, steps[r][name], rtol=1e-6, atol=1e-5, msg=f"rank {r} {name}")
            torch.testing.assert_close(got["epoch"][f"{name}_epoch"].item(), epoch[r][name], rtol=1e-6, atol=1e-5,
                                       msg=f"rank {r} {name}")
    # each rank alone logs its own values: different per rank; the group of both agrees
    assert steps[0]["own"] != steps[1]["own"] and steps[0]["both"] == steps[1]["both"]
