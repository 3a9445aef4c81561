"""Sharded FSDP2 checkpoints for tests/test_fsdp_checkpoint.py (the Trainer starts the ranks).

    python tests/fsdp_ckpt_child.py one OUT    # 1 rank: OUT/one.ckpt (sharded), OUT/plain.ckpt (1 process)
    python tests/fsdp_ckpt_child.py main OUT   # 2 ranks: exact resume, async save, rotation, 1 -> 2 ranks
    python tests/fsdp_ckpt_child.py fail OUT   # 2 ranks: a save that fails on rank 1 midway

`main` writes, per rank r: OUT/ref<r>.pt (an uninterrupted fit to step 10: full weights and
optimizer state), OUT/resumed<r>.pt (a fit stopped at step 4 with async sharded checkpoints, then
resumed from ``ckpt_path="last"`` to step 10) and OUT/from_one<r>.pt (OUT/one.ckpt loaded on two
ranks), OUT/from_plain<r>.pt and OUT/from_one.consolidated<r>.pt (single files loaded on two
ranks: OUT/plain.ckpt, and OUT/one.ckpt consolidated by the test); the resumed fit's checkpoints
are in OUT/ckpts. `fail` saves ``last.ckpt`` at every step,
and rank 1's shard writer raises in the second save: rank 0 writes OUT/fail0.txt with the error.
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

TIMEOUT = datetime.timedelta(seconds=60)
STEPS = 10
STOP = 4


def data(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


class Net(mopt_fast.LightningModule):
    """Noise drawn from each rank's own RNG, seeded per rank: an exact resume needs every rank's."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.batches_run = 0  # by this fit: a resumed one runs only the rest

    def setup(self, stage: str) -> None:
        torch.manual_seed(1000 + self.trainer.global_rank)  # a resumed fit then restores the RNG

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.batches_run += 1
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=0.02, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def trainer(devices: int, max_steps: int, callbacks: list[Any] | None = None, async_save: bool = False,
            **kwargs: Any) -> mopt_fast.Trainer:
    return mopt_fast.Trainer(
        accelerator="cpu", strategy=mopt_fast.FSDPStrategy(timeout=TIMEOUT, async_save=async_save),
        devices=devices, max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, enable_checkpointing=bool(callbacks), **kwargs)


def full_state(trainer: mopt_fast.Trainer, model: Net) -> dict[str, Any]:
    """The full (gathered) weights and optimizer state, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    return {"model": get_model_state_dict(model, options=options),
            "optim": get_optimizer_state_dict(model, trainer.optimizers[0], options=options),
            "global_step": trainer.global_step, "world_size": trainer.world_size, "batches_run": model.batches_run}


def checkpoints(folder: str) -> mopt_fast.ModelCheckpoint:
    return mopt_fast.ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=2, save_top_k=2,
                                     monitor="step", mode="max", save_last=True)


def one(out: str) -> None:
    model = Net()
    t = trainer(1, 3)
    t.fit(model, data(8))
    t.save_checkpoint(os.path.join(out, "one.ckpt"))
    # a single-file checkpoint of a one-process Trainer (optimizer states keyed by index)
    plain = mopt_fast.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False)
    plain.fit(Net(), data(8))
    plain.save_checkpoint(os.path.join(out, "plain.ckpt"))


def main(out: str) -> None:
    folder = os.path.join(out, "ckpts")
    model = Net()
    t = trainer(2, STEPS)
    t.fit(model, data(8))
    rank = t.global_rank
    torch.save(full_state(t, model), os.path.join(out, f"ref{rank}.pt"))

    model = Net()
    t = trainer(2, STOP, [checkpoints(folder)], async_save=True)
    t.fit(model, data(8))
    model = Net()
    t = trainer(2, STEPS, [checkpoints(folder)])
    t.fit(model, data(8), ckpt_path="last")
    torch.save(full_state(t, model), os.path.join(out, f"resumed{rank}.pt"))

    model = Net()
    t = trainer(2, 3)
    t.fit(model, data(8), ckpt_path=os.path.join(out, "one.ckpt"))
    torch.save(full_state(t, model), os.path.join(out, f"from_one{rank}.pt"))

    for name in ("plain", "one.consolidated"):  # single files: each rank keeps its shard of the full tensors
        model = Net()
        t = trainer(2, 3)
        t.fit(model, data(8), ckpt_path=os.path.join(out, f"{name}.ckpt"))
        torch.save(full_state(t, model), os.path.join(out, f"from_{name}{rank}.pt"))


def fail(out: str) -> None:
    from torch.distributed.checkpoint import FileSystemWriter

    write_data = FileSystemWriter.write_data
    calls = []

    def failing_write_data(self: Any, plan: Any, planner: Any) -> Any:
        calls.append(1)
        if len(calls) == 2 and torch.distributed.get_rank() == 1:
            raise OSError("disk full (injected)")
        return write_data(self, plan, planner)

    FileSystemWriter.write_data = failing_write_data  # type: ignore[method-assign]
    callback = mopt_fast.ModelCheckpoint(dirpath=os.path.join(out, "fail"), save_top_k=0, save_last=True,
                                         every_n_train_steps=1)
    t = trainer(2, STOP, [callback])
    try:
        t.fit(Net(), data(8))
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if t.global_rank == 0:
            with open(os.path.join(out, "fail0.txt"), "w") as f:
                f.write(f"{type(e).__name__}: {e}\n")
        raise


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"one": one, "main": main, "fail": fail}[sys.argv[1]](sys.argv[2])
