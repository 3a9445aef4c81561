"""The training script of tests/test_multinode.py: two torchrun agents on this machine stand for
two nodes of two processes each (4 gloo ranks on the CPU).

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
             --rdzv-id JOB tests/multinode_child.py STRATEGIES OUT     # on each "node"

For each strategy of STRATEGIES (comma-separated: ddp, fsdp), each rank trains ddp_child's
Regressor twice, one fit after the other in the same process group: automatic optimization, then
manual, with `Trainer(strategy=STRATEGY, devices=2, num_nodes=2)`, each fit on a quarter of every
full batch (DistributedSampler). In OUT/STRATEGY/MODE/ it writes rank<r>.pt (weights, global_step,
callback_metrics, the pid, and the ranks as the trainer, the strategy and torchrun's environment
give them), prepared.<r> from `prepare_data` (once per node for automatic, once in all for manual:
`prepare_data_per_node` False) and saved_by.<r> from each checkpoint write; at exit, OUT/rank<r>.exit:
whether the process group was destroyed before interpreter finalization.
"""
from __future__ import annotations

import atexit
import datetime
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import ddp_child  # noqa: E402

import mopt_fast  # noqa: E402
from mopt_fast.plugins.io import TorchCheckpointIO  # noqa: E402

DEVICES, NODES = 2, 2
MODES = ("automatic", "manual")
ENV_RANKS = ("GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


class RecordingIO(TorchCheckpointIO):
    """Leaves OUT/STRATEGY/MODE/saved_by.<RANK> beside each checkpoint write: who wrote."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        open(os.path.join(self.out, f"saved_by.{os.environ['RANK']}"), "w").close()
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)


class NodeRegressor(ddp_child.Regressor):
    def __init__(self, mode: str, out: str) -> None:
        super().__init__(mode)
        self.out = out
        self.prepare_data_per_node = mode == "automatic"

    def prepare_data(self) -> None:
        open(os.path.join(self.out, f"prepared.{os.environ['RANK']}"), "w").close()


def make_strategy(name: str) -> Any:
    timeout = datetime.timedelta(seconds=60)
    return mopt_fast.DDPStrategy(timeout=timeout) if name == "ddp" else mopt_fast.FSDPStrategy(timeout=timeout)


def ranks(obj: Any) -> dict[str, int]:
    return {k: getattr(obj, k) for k in ("node_rank", "local_rank", "global_rank", "world_size")}


def fit(strategy_name: str, mode: str, out: str) -> None:
    model = NodeRegressor(mode, out)
    strategy = make_strategy(strategy_name)
    # FSDP's checkpoints are another piece of work: this run checks writing with DDP only.
    trainer = mopt_fast.Trainer(accelerator="cpu", strategy=strategy, devices=DEVICES, num_nodes=NODES,
                                max_epochs=2, default_root_dir=out, log_every_n_steps=1, enable_progress_bar=False,
                                enable_checkpointing=strategy_name == "ddp", plugins=[RecordingIO(out)])
    trainer.fit(model, ddp_child.data(ddp_child.FULL_BATCH // (DEVICES * NODES)))
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()}
    torch.save({"state": state, "global_step": trainer.global_step,
                "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
                "trainer": ranks(trainer), "strategy": ranks(strategy), "module_global_rank": model.global_rank,
                "module_local_rank": model.local_rank, "is_global_zero": trainer.is_global_zero,
                "num_nodes": trainer.num_nodes, "pid": os.getpid(), "num_devices": trainer.num_devices,
                "env": {k: int(os.environ[k]) for k in ENV_RANKS}},
               os.path.join(out, f"rank{trainer.global_rank}.pt"))


def main(strategy_names: str, out: str) -> None:
    torch.set_num_threads(1)

    def record_teardown() -> None:  # registered before fit: runs after the strategy's atexit hook
        with open(os.path.join(out, f"rank{os.environ['RANK']}.exit"), "w") as f:
            f.write(f"destroyed={not dist.is_initialized()}\n")

    atexit.register(record_teardown)
    for name in strategy_names.split(","):
        for mode in MODES:
            run_dir = os.path.join(out, name, mode)
            os.makedirs(run_dir, exist_ok=True)
            fit(name, mode, run_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
