"""Two gloo ranks for tests/test_lightning_surface_callbacks.py: EarlyStopping, ModelCheckpoint
and LearningRateMonitor must decide the same on every rank when the ranks see different metrics.

    python tests/callbacks_ddp_child.py OUT      # the Trainer starts rank 1 itself

Each rank writes OUT/rank<r>.pt with what its callbacks decided.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast
from mopt_fast.loggers import Logger

# val_metric per rank and epoch: rank 0 improves every epoch, rank 1 stops improving at epoch 2
VALUES = {0: [5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 1: [5.0, 4.0, 4.5, 4.6, 4.7, 4.8]}


class Module(mopt_fast.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # deliberately not synced: each rank monitors its own value
        self.log("val_metric", VALUES[self.trainer.global_rank][self.current_epoch])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)]


class Recording(Logger):
    def __init__(self, save_dir: str) -> None:
        super().__init__(save_dir)
        self.calls: list = []

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    es = mopt_fast.EarlyStopping(monitor="val_metric", patience=1)
    ckpt = mopt_fast.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), monitor="val_metric", save_top_k=1)
    logger = Recording(out)
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy=mopt_fast.DDPStrategy(timeout=datetime.timedelta(seconds=60)),
                                devices=2, max_epochs=6, logger=logger, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0,
                                callbacks=[es, ckpt, mopt_fast.LearningRateMonitor(logging_interval="epoch")])
    trainer.fit(Module(), loader, loader)
    torch.save({"epoch": trainer.current_epoch, "stopped_epoch": es.stopped_epoch, "wait_count": es.wait_count,
                "reason": es.stopping_reason.name, "best": os.path.basename(ckpt.best_model_path),
                "files": sorted(os.listdir(ckpt.dirpath)), "lr_calls": [c for c in logger.calls if "lr-SGD" in c[1]]},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
