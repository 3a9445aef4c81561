"""Training runs for tests/test_preemption.py, as processes of their own (signals, SIGKILL, hangs).

    python tests/preempt_child.py OUT [--devices N] [--signal-step K --signal-rank R] [--resume last|hpc]
    torchrun --standalone --max-restarts=1 --nproc-per-node 2 tests/preempt_child.py OUT --kill-step K ...

Every rank writes OUT/rank<r>.pt at the end (weights, optimizer state, global_step) and
OUT/on_exception<r>.txt when on_exception runs. --signal-step K: at training batch K (counted over
the fit) rank R writes its pid to OUT/reached<R> and waits, inside the step, until the test's
signal has arrived (trainer.received_sigterm). --kill-step K: rank 1 SIGKILLs itself at batch K in
torchrun's first attempt only. --hang-step K: rank 1 blocks for good at batch K (an Event nobody
sets), after writing OUT/hung1 with its pid.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import threading
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast


def data() -> DataLoader:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


class Regressor(mopt_fast.LightningModule):
    """Dropout in one process (its RNG state must come back on resume); none under DDP, where the
    checkpoint holds rank 0's RNG state only."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.hook: Any = None
        self.short_timeout: datetime.timedelta | None = None

    def shorten_timeout(self) -> None:
        # The collectives' timeout, shortened on every rank at the batch where rank 1 hangs, not
        # before: a loaded machine may stall a healthy step longer than that, and joining is
        # bounded by the strategy's own timeout.
        if self.short_timeout is not None:
            torch.distributed.distributed_c10d._set_pg_timeout(self.short_timeout)
            self.trainer.strategy.timeout = self.short_timeout

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hook is not None:
            self.hook()
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)]


class RecordException(mopt_fast.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if trainer.global_rank > 0 and isinstance(exception, mopt_fast.exceptions.SIGTERMException):
            # After rank 0's hook: a rank 0 that ended the others when it stopped would show here.
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(self.out, "on_exception0.txt")) and time.monotonic() < deadline:
                time.sleep(0.01)
        with open(os.path.join(self.out, f"on_exception{trainer.global_rank}.txt"), "w") as f:
            f.write(f"{type(exception).__name__} {getattr(exception, 'code', None)} {trainer.received_sigterm} "
                    f"{trainer.global_step}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--signal-step", type=int, default=-1)
    ap.add_argument("--signal-rank", type=int, default=0)
    ap.add_argument("--kill-step", type=int, default=-1)
    ap.add_argument("--hang-step", type=int, default=-1)
    ap.add_argument("--resume", choices=["last", "hpc"], default=None)
    ap.add_argument("--every", type=int, default=0, help="ModelCheckpoint(every_n_train_steps=...), last.ckpt")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--reseed", action="store_true")
    ap.add_argument("--collective-timeout", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Regressor(dropout=0.2 if args.devices == 1 else 0.0)
    if args.reseed:  # a resumed run must not depend on its own RNG: the checkpoint's comes back
        torch.manual_seed(1000)
    seen = {"n": 0}
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def hook() -> None:
        seen["n"] += 1
        rank = model.trainer.global_rank
        if seen["n"] == args.signal_step and rank == args.signal_rank:
            with open(os.path.join(args.out, f"reached{rank}.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(args.out, f"reached{rank}.tmp"), os.path.join(args.out, f"reached{rank}"))
            deadline = time.monotonic() + 60
            while not model.trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.005)  # polling a condition the test's signal sets, bounded
        if seen["n"] == args.kill_step and rank == 1 and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        if seen["n"] == args.hang_step:
            model.shorten_timeout()
        if seen["n"] == args.hang_step and rank == 1:
            with open(os.path.join(args.out, "hung1"), "w") as f:
                f.write(str(os.getpid()))
            threading.Event().wait()

    model.hook = hook
    if args.collective_timeout:
        model.short_timeout = datetime.timedelta(seconds=args.collective_timeout)
    callbacks: list[Any] = [RecordException(args.out)]
    if args.every:
        callbacks.append(mopt_fast.ModelCheckpoint(dirpath=os.path.join(args.out, "ckpt"), save_last=True,
                                                   save_top_k=0, every_n_train_steps=args.every))
    strategy: Any = "auto"
    if args.devices > 1:
        strategy = mopt_fast.DDPStrategy(timeout=datetime.timedelta(seconds=args.timeout))
    logger = mopt_fast.loggers.CSVLogger(args.out, name="csv", version=0)
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy=strategy, devices=args.devices, max_epochs=args.epochs,
                                default_root_dir=args.out, logger=logger, log_every_n_steps=1, callbacks=callbacks,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(), ckpt_path=args.resume)
    torch.save({"state": model.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                "global_step": trainer.global_step}, os.path.join(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    sys.exit(main())
