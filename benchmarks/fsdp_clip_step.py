"""Per-step clip time and collective count on a 2-rank FSDP2 model: mopt_fast against torch.

    torchrun --nproc-per-node 2 benchmarks/fsdp_clip_step.py [--rounds 41] [--width 512] [--layers 8]

The model: `--layers` Linear(width, width) layers, each sharded with fully_shard on a 1-D gloo
mesh (8 x 512 x 512: 2.1M parameters, 8.4 MB in fp32), gradients random and fixed. Each
variant's step is timed on its own, the gradients restored before each call (not timed), the
ranks aligned by a barrier (not timed); the rounds interleave the variants, so a slow moment of
the shared machine lands on all of them. Printed: the median over rounds of the slower rank's time,
the ratio to torch's, and the collectives one step makes (torch.distributed's functions wrapped
and counted by name).

- fp32 clip: `mopt_fast.clip_grad_norm_` against torch's as torchtitan runs it on FSDP2
  (`torch.nn.utils.get_total_norm(foreach=True)` on the DTensor gradients, which works on the
  local shards and gives a Partial norm, `.full_tensor()`: its all-reduce, then
  `clip_grads_with_norm_(foreach=True)`);
- AMP clip with the inf check: `mopt_fast.unscale_clip_grad_norm_` (one packed all-reduce of the
  norm, found_inf and the loss flag) against torch's ShardedGradScaler way (unscale and inf check
  on the local shards, an all-reduce of found_inf) followed by the torchtitan clip above.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import mopt_fast

COLLECTIVES = ("all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_single",
               "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "broadcast", "barrier")
# DTensor's redistributions (a Partial norm's full_tensor()) go through the functional collectives.
FUNCTIONAL_COLLECTIVES = ("broadcast", "all_reduce", "all_reduce_coalesced", "all_gather_single",
                          "all_gather_tensor", "reduce_scatter_single", "reduce_scatter_tensor")
COUNTS: collections.Counter[str] = collections.Counter()


def count_collectives() -> None:
    """Wrap torch.distributed's collectives and its functional ones (looked up on their module at
    call time) to count them, the functional ones as "funcol.NAME"."""
    import torch.distributed._functional_collectives as funcol

    for module, prefix, names in ((dist, "", COLLECTIVES), (funcol, "funcol.", FUNCTIONAL_COLLECTIVES)):
        for name in names:
            original = getattr(module, name, None)
            if original is None:
                continue

            def counted(*args: Any, _name: str = prefix + name, _original: Any = original, **kwargs: Any) -> Any:
                COUNTS[_name] += 1
                return _original(*args, **kwargs)

            setattr(module, name, counted)


def torch_clip(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torchtitan's clip_grad_norm_ for FSDP2 (without pipeline parallelism)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0, False, True)
    if isinstance(total, DTensor):
        total = total.full_tensor()  # the all-reduce of the partial norms
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, True)
    return total


def torch_amp_clip(params: list[nn.Parameter], max_norm: float, inv_scale: torch.Tensor,
                   found_inf: torch.Tensor) -> torch.Tensor:
    """ShardedGradScaler.unscale_'s work (unscale + inf check on the local shards, one all-reduce
    of found_inf), then torchtitan's clip."""
    local = [p.grad.to_local() for p in params if p.grad is not None]
    torch._amp_foreach_non_finite_check_and_unscale_(local, found_inf, inv_scale)
    dist.all_reduce(found_inf)
    return torch_clip(params, max_norm)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1 + rank)
    scale = 1024.0
    saved = [torch.randn(p.to_local().shape, generator=g) * scale for p in params]
    for p, s in zip(params, saved):
        p.grad = torch.distributed.tensor.DTensor.from_local(s.clone(), mesh, p.placements)
    n_params = sum(p.numel() for p in params)
    max_norm = 1.0
    inv_scale = torch.full((), 1 / scale)
    loss = torch.tensor(0.5)

    def found() -> torch.Tensor:
        return torch.zeros(())

    variants: dict[str, Callable[[], Any]] = {
        "fp32 clip: torch (torchtitan)": lambda: torch_clip(params, max_norm),
        "fp32 clip: mopt_fast clip_grad_norm_": lambda: mopt_fast.clip_grad_norm_(params, max_norm),
        "AMP clip: torch (ShardedGradScaler unscale_ + torchtitan clip)":
            lambda: torch_amp_clip(params, max_norm, inv_scale, found()),
        "AMP clip: mopt_fast unscale_clip_grad_norm_ (+ loss flag)":
            lambda: mopt_fast.unscale_clip_grad_norm_(params, max_norm, inv_scale, found(), loss=loss),
    }
    count_collectives()
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, dict[str, int]] = {}
    for round_ in range(args.rounds + 2):  # two warm-up rounds
        for name, step in variants.items():
            for p, s in zip(params, saved):
                p.grad.to_local().copy_(s)
            dist.barrier()
            COUNTS.clear()
            t0 = time.perf_counter()
            step()
            elapsed = time.perf_counter() - t0
            counts[name] = {k: v for k, v in COUNTS.items() if k != "barrier"}
            slowest = torch.tensor([elapsed], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # not counted: the counts were read above
            if round_ >= 2:
                times[name].append(slowest.item())
    if rank == 0:
        print(f"FSDP2, 2 gloo ranks, {n_params / 1e6:.2f}M parameters ({n_params * 4 / 1e6:.1f} MB fp32) in "
              f"{args.layers} sharded Linear({args.width}, {args.width}), {args.rounds} rounds, torch "
              f"{torch.__version__}")
        print(f"{'variant':70s} {'median ms':>9s} {'vs torch':>8s}  collectives per step")
        base: dict[str, float] = {}
        for name, ts in times.items():
            kind = name.split(":")[0]
            median = statistics.median(ts)
            base.setdefault(kind, median)
            print(f"{name:70s} {median * 1e3:9.3f} {median / base[kind]:8.2f}  {counts[name]}")
    from mopt_fast.trainer.strategies import _wait_until_gloo_threads_idle

    dist.destroy_process_group()
    _wait_until_gloo_threads_idle()


if __name__ == "__main__":
    main()
