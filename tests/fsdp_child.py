"""FSDP2 runs for tests/test_ddp.py (torchrun starts the ranks).

    torchrun --nproc-per-node 2 tests/fsdp_child.py clip OUT    # clip_grad_norm_ on DTensor shards
    python tests/fsdp_child.py train OUT                        # Trainer(strategy="fsdp", devices=2)

`clip` checks, on every rank, mopt_fast.clip_grad_norm_ over sharded gradients against torch's
clip_grad_norm_ over the same gradients unsharded, and writes OUT/clip<rank>.txt. `train` writes
OUT/rank<r>.pt with the gathered weights after training with clipping.
"""
from __future__ import annotations

import copy
import math
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import ddp_child  # noqa: E402

import mopt_fast  # noqa: E402

CLIP = 0.05


def clip_check(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    lines = []
    for norm_type in (2.0, math.inf, 1.5, 1.0):
        for max_norm in (0.1, 1e9):  # clipping, and a no-op clip
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 17), nn.Tanh(), nn.Linear(17, 3), nn.Linear(3, 1))  # uneven shards
            ref = copy.deepcopy(model)
            for child in model:
                if any(True for _ in child.parameters()):
                    fully_shard(child, mesh=mesh)
            fully_shard(model, mesh=mesh)
            g = torch.Generator().manual_seed(1)
            for p_ref, p in zip(ref.parameters(), model.parameters()):
                full = torch.randn(p_ref.shape, generator=g)
                p_ref.grad = full.clone()
                p.grad = distribute_tensor(full, mesh, [Shard(0)])
            total = mopt_fast.clip_grad_norm_(model.parameters(), max_norm, norm_type)
            ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
            torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=0)
            for p_ref, p in zip(ref.parameters(), model.parameters()):
                torch.testing.assert_close(p.grad.full_tensor(), p_ref.grad, rtol=1e-6, atol=1e-7)
            lines.append(f"p={norm_type} max_norm={max_norm} total={total.item():.6f} ref={ref_total.item():.6f}")
    with open(os.path.join(out, f"clip{rank}.txt"), "w") as f:
        f.write("\n".join(lines) + "\nOK\n")
    # This script made the process group, so it ends it, as the Trainer's strategy does for its
    # own: destroyed, then a wait until gloo's worker threads are idle. Without it the process
    # sometimes aborts at exit ("terminate called without an active exception", 1 run in 16
    # here): a gloo thread still dropping a Python object meets interpreter finalization (the
    # whole story in mopt_fast/trainer/strategies.py's docstring).
    from mopt_fast.trainer.strategies import _wait_until_gloo_threads_idle

    dist.destroy_process_group()
    _wait_until_gloo_threads_idle()


def train(out: str) -> None:
    model = ddp_child.Regressor("automatic")
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy="fsdp", devices=2, max_epochs=2, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=CLIP)
    trainer.fit(model, ddp_child.data(ddp_child.FULL_BATCH // 2))
    state = {k: v.full_tensor() for k, v in model.state_dict().items()}
    torch.save({"state": state, "global_step": trainer.global_step, "world_size": trainer.world_size},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


def reference() -> dict:
    model = ddp_child.Regressor("automatic")
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=CLIP)
    trainer.fit(model, ddp_child.data(ddp_child.FULL_BATCH))
    return {"state": model.state_dict(), "global_step": trainer.global_step}


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"clip": clip_check, "train": train}[sys.argv[1]](sys.argv[2])
