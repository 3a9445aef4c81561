"""Two DDP ranks (the Trainer starts rank 1) logging with ``sync_dist_group``, for
tests/test_sync_dist_group.py.

    python tests/sync_dist_group_child.py OUT

The values logged do not depend on the weights (sums of the batch's inputs, scaled per rank), so
the test computes what Lightning logs from the data alone. Groups, made in `setup` on both ranks
(torch.distributed.new_group is a collective over the whole world): each rank alone, and both.
Each rank writes OUT/rank<r>.pt: the step values (callback_metrics after each batch) and the
epoch values (callback_metrics after fit).
"""
from __future__ import annotations

import atexit
import datetime
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast

EPOCHS = 2
BATCH = 4  # per rank
NAMES = ("own", "own_sum", "both", "both_sum", "both_max", "world")


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(24, 3, generator=g)
    return TensorDataset(x, torch.randn(24, 1, generator=g))


def logged_value(x: torch.Tensor, rank: int) -> torch.Tensor:
    """What rank `rank` logs for its batch `x`: distinct per rank, independent of training."""
    return x.sum() * (rank + 1) + 10 * rank


class GroupLogger(mopt_fast.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.groups: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        # Every rank makes every group, in the same order; a rank keeps the ones it belongs to.
        alone = [dist.new_group([r]) for r in range(dist.get_world_size())]
        self.groups = {"own": alone[dist.get_rank()], "both": dist.new_group([0, 1])}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        v = logged_value(x, self.global_rank)
        own, both = self.groups["own"], self.groups["both"]
        self.log("own", v, on_step=True, on_epoch=True, sync_dist=True, sync_dist_group=own)
        self.log("own_sum", v, on_step=True, on_epoch=True, reduce_fx="sum", sync_dist=True, sync_dist_group=own)
        self.log("both", v, on_step=True, on_epoch=True, sync_dist=True, sync_dist_group=both)
        self.log("both_sum", v, on_step=True, on_epoch=True, reduce_fx="sum", sync_dist=True, sync_dist_group=both)
        self.log_dict({"both_max": v}, on_step=True, on_epoch=True, reduce_fx="max", sync_dist=True,
                      sync_dist_group=both)
        self.log("world", v, on_step=True, on_epoch=True, sync_dist=True)
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepRecorder(mopt_fast.Callback):
    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append({k: v.clone() for k, v in trainer.callback_metrics.items() if k.endswith("_step")})


def main(out: str) -> None:
    torch.set_num_threads(1)

    def teardown_record() -> None:  # registered before fit: runs after the strategy's own atexit hook
        with open(os.path.join(out, f"rank{os.environ.get('RANK', '?')}.exit"), "w") as f:
            f.write(f"destroyed={not dist.is_initialized()}\n")

    atexit.register(teardown_record)
    recorder = StepRecorder()
    trainer = mopt_fast.Trainer(
        accelerator="cpu", strategy=mopt_fast.DDPStrategy(timeout=datetime.timedelta(seconds=60)), devices=2,
        max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder],
    )
    trainer.fit(GroupLogger(), DataLoader(dataset(), batch_size=BATCH, shuffle=False))
    epoch = {k: v.clone() for k, v in trainer.callback_metrics.items() if k.endswith("_epoch")}
    torch.save({"steps": recorder.steps, "epoch": epoch}, os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
