"""The training stall per sharded checkpoint save, sync against async, under FSDP2 on 2 gloo ranks.

    python benchmarks/sharded_checkpoint_stall.py [--rounds 2] [--saves 6] [--every 3] [--width 512]

A fit of an MLP (3 Linear layers of --width, AdamW: a few MB of weights and optimizer state)
calls ``trainer.save_checkpoint`` every --every steps into one folder (each save replaces the
last); the stall is the time that call holds the rank (every rank waits at its end for the
others, so rank 0's figure is the run's). Each round runs one sync fit, then one async fit
(``FSDPStrategy(async_save=True)``); printed by rank 0: the median stall per save of each, the
median training step. With --every too small for the write to end between two saves, an async
save's stall includes the wait for the previous one.
The Trainer starts rank 1 itself (run it as a plain script).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import mopt_fast  # noqa: E402


class MLP(mopt_fast.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class StallTimer(mopt_fast.Callback):
    """Saves every `every` steps and times the call; times the steps without a save too."""

    def __init__(self, folder: str, every: int) -> None:
        self.folder, self.every = folder, every
        self.stalls: list[float] = []
        self.steps: list[float] = []
        self._step_start = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append(time.perf_counter() - self._step_start)
        if (batch_idx + 1) % self.every == 0:
            start = time.perf_counter()
            trainer.save_checkpoint(os.path.join(self.folder, "bench.ckpt"))
            self.stalls.append(time.perf_counter() - start)


def fit(async_save: bool, args: argparse.Namespace, folder: str) -> dict[str, float]:
    width = args.width
    g = torch.Generator().manual_seed(1)
    steps = args.saves * args.every
    x = torch.randn(steps * 2 * 32, width, generator=g)
    loader = DataLoader(TensorDataset(x, x[:, :1].clone()), batch_size=32)
    timer = StallTimer(folder, args.every)
    trainer = mopt_fast.Trainer(
        accelerator="cpu", devices=2, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        strategy=mopt_fast.FSDPStrategy(timeout=datetime.timedelta(seconds=120), async_save=async_save))
    model = MLP(width)
    trainer.fit(model, loader)
    params = sum(p.numel() for p in model.parameters()) * 2  # sharded over 2 ranks: the global count
    return {"stall": statistics.median(timer.stalls), "step": statistics.median(timer.steps),
            "rank": trainer.global_rank, "mb": params * 4 * 3 / 2**20}  # weights + AdamW's 2 moments, fp32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--saves", type=int, default=6)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(prefix="mopt_fast_stall_") as tmp:
        # the same folder on every rank: rank 0's name, handed to rank 1 through the environment
        folder = os.environ.setdefault("MOPT_FAST_STALL_DIR", tmp)
        for _ in range(args.rounds):
            for mode in ("sync", "async"):
                results[mode].append(fit(mode == "async", args, folder))
    if results["sync"][0]["rank"] != 0:
        return
    mb = results["sync"][0]["mb"]
    print(f"FSDP2, 2 gloo ranks, {mb:.1f} MB of checkpointed state (weights + AdamW moments), "
          f"{args.saves} saves per fit, {args.rounds} round(s)")
    for mode, runs in results.items():
        stall = statistics.median(r["stall"] for r in runs) * 1e3
        step = statistics.median(r["step"] for r in runs) * 1e3
        print(f"  {mode:5s}: stall per save {stall:8.1f} ms   training step {step:6.2f} ms")


if __name__ == "__main__":
    main()
