"""DDP runs for tests/test_ddp.py, as a script (DDP needs processes of its own).

    python tests/ddp_child.py MODE OUT [--devices N]            # the Trainer starts the other ranks
    torchrun --nproc-per-node N tests/ddp_child.py MODE OUT     # torchrun starts them

Each rank writes OUT/rank<r>.pt: the weights, global_step and callback_metrics, and at exit
OUT/rank<r>.exit: whether the process group was already destroyed when the script's own atexit
hooks ran (before interpreter finalization). `reference(MODE)` gives what one process training on
the full batches must end with.

Modes that fail on purpose: "die" (rank 1 SIGKILLs itself during training), "exit_before_fit"
(rank 1, started by rank 0, exits with code 3 before it joins the process group) and
"exit_in_init" (rank 1 checks in with rank 0, then exits with code 4 inside init_process_group).
The last two keep the default 30-minute timeout: rank 0 must not wait for it.
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast

FULL_BATCH = 16


def data(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Regressor(mopt_fast.LightningModule):
    """No dropout: every rank must compute what the single process computes on its half."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.mode = mode
        self.automatic_optimization = mode == "automatic"

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.loss(batch)
        self.log("loss", loss, sync_dist=True, on_epoch=True)
        if self.mode == "automatic":
            return loss
        opt = self.optimizers()
        if self.mode == "manual":
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        elif self.mode == "manual_no_sync":  # accumulate two batches, all-reduce on the second only
            stepping = (batch_idx + 1) % 2 == 0
            with opt.toggle_model(sync_grad=stepping):
                self.manual_backward(loss / 2)
            if stepping:
                opt.step()
                opt.zero_grad()
        elif self.mode == "die":
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            if self.trainer.global_rank == 1 and batch_idx == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return None

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def reference(mode: str) -> dict:
    model = Regressor(mode)
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(FULL_BATCH))
    return {"state": model.state_dict(), "global_step": trainer.global_step,
            "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("out")
    ap.add_argument("--devices", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = args.devices
    started_by_rank_zero = os.environ.get("RANK") == "1"  # rank 0 has no RANK until its fit starts rank 1
    if args.mode == "exit_before_fit" and started_by_rank_zero:
        sys.exit(3)
    if args.mode == "exit_in_init" and started_by_rank_zero:
        torch.distributed.init_process_group = lambda *a, **k: os._exit(4)

    # Registered before fit, so it runs after the hooks fit registers (atexit is last-in first-out).
    def record_teardown() -> None:
        with open(os.path.join(args.out, f"rank{os.environ.get('RANK', '?')}.exit"), "w") as f:
            f.write(f"destroyed={not torch.distributed.is_initialized()}\n")

    atexit.register(record_teardown)
    if args.mode in ("exit_before_fit", "exit_in_init"):
        strategy = mopt_fast.DDPStrategy()
    else:
        strategy = mopt_fast.DDPStrategy(timeout=datetime.timedelta(seconds=30))
    model = Regressor(args.mode)
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy=strategy, devices=world, max_epochs=2,
                                default_root_dir=args.out, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model, data(FULL_BATCH // world))
    torch.save({"state": model.state_dict(), "global_step": trainer.global_step, "world_size": trainer.world_size,
                "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()}},
               os.path.join(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    sys.exit(main())
