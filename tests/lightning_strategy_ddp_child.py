"""Two gloo ranks for tests/test_lightning_callbacks_in_our_trainer.py: what Lightning's callbacks
call on ``trainer.strategy`` (broadcast, reduce, all_gather, reduce_boolean_decision...) under DDP,
in Lightning's Trainer or mopt_fast's.

    python tests/lightning_strategy_ddp_child.py FRAMEWORK OUT   # the Trainer starts rank 1 itself

Each rank writes OUT/FRAMEWORK-rank<r>.pt with what the strategy answered.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main(framework: str, out: str) -> None:
    LM, Trainer = (pl.LightningModule, pl.Trainer) if framework == "lightning" else _ours()

    class Module(LM):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Probe(pl.callbacks.Callback):
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            s, r = trainer.strategy, trainer.global_rank
            s.barrier("probe")
            answers = {
                "root_device": str(s.root_device), "is_global_zero": s.is_global_zero,
                "broadcast": s.broadcast({"from": r}), "broadcast_src1": s.broadcast(r, src=1),
                "all": s.reduce_boolean_decision(r == 0), "any": s.reduce_boolean_decision(r == 0, all=False),
                "all_true": s.reduce_boolean_decision(True), "none": s.reduce_boolean_decision(False, all=False),
                "sum": s.reduce(torch.tensor(float(r + 1)), reduce_op="sum").item(),
                "mean": s.reduce(torch.tensor(float(r + 1))).item(),
                "max": s.reduce(torch.tensor(float(r + 1)), reduce_op="max").item(),
                "gather": s.all_gather(torch.tensor([r, 10 * r])).tolist(),
                "model": type(s.model).__name__, "lightning_module": s.lightning_module is pl_module,
                "device_ids": trainer.device_ids, "world_size": trainer.world_size,
            }
            torch.save(answers, os.path.join(out, f"{framework}-rank{r}.pt"))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Probe()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), data)
    # Lightning's DDPStrategy leaves its gloo group alive: torn down by the interpreter's exit, a
    # gloo worker still running aborts the process now and then ("terminate called without an
    # active exception", status -6). Close it as mopt_fast's own teardown does.
    import torch.distributed as dist

    from mopt_fast.trainer.strategies import _wait_until_gloo_threads_idle

    if dist.is_initialized():
        dist.destroy_process_group()
    _wait_until_gloo_threads_idle()


def _ours() -> tuple[type, type]:
    import mopt_fast

    return mopt_fast.LightningModule, mopt_fast.Trainer


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
