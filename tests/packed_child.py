"""Two-rank FSDP2 runs for tests/test_packed_collective.py: one all-reduce per step.

    torchrun --nproc-per-node 2 tests/packed_child.py functional OUT   # unscale_clip_grad_norm_ on shards
    python tests/packed_child.py trainer OUT [--precision P] [--faults] [--strategy fsdp|ddp]

Every collective function of torch.distributed is wrapped (`CollectiveCounter`) and counted by
name, so FSDP2's own all-gathers and reduce-scatters are told apart from all-reduces; host reads
(`.item()`, `bool(tensor)`: aten._local_scalar_dense) are counted by a dispatch mode.

`functional` writes OUT/functional<rank>.json: per case, the collectives and host reads of one
mopt_fast.unscale_clip_grad_norm_ over FSDP2's DTensor gradients, found_inf after it, and whether
the norm and the clipped gradients equal torch's unscale + clip_grad_norm_ on the unsharded
gradients. `trainer` writes OUT/trainer<rank>.json: per training batch, the collectives between
on_train_batch_start and on_train_batch_end of Trainer(strategy=FSDPStrategy, devices=2) with
gradient clipping, whether this rank's shards changed, and the loss scale.
"""
from __future__ import annotations

import argparse
import collections
import copy
import datetime
import json
import math
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import mopt_fast

# Every collective torch.distributed offers that FSDP2, DTensor or the Trainer may call.
COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_single",
    "all_gather_coalesced", "all_gather_object", "reduce_scatter", "reduce_scatter_tensor",
    "reduce_scatter_single", "reduce", "broadcast", "broadcast_object_list", "barrier", "all_to_all",
    "all_to_all_single", "gather", "scatter", "gather_object", "scatter_object_list",
)
# DTensor's redistributions (a Partial norm's full_tensor()) go through the functional collectives.
FUNCTIONAL_COLLECTIVES = (
    "broadcast", "all_reduce", "all_reduce_coalesced", "all_gather_single", "all_gather_tensor",
    "reduce_scatter_single", "reduce_scatter_tensor", "all_to_all_single",
)


class CollectiveCounter:
    """Wraps torch.distributed's collective functions and its functional collectives (callers
    look them up on the module at call time: `dist.all_reduce(...)`, `funcol.all_reduce(...)`)
    and counts the calls by name while `active` (the functional ones as "funcol.NAME")."""

    def __init__(self) -> None:
        import torch.distributed._functional_collectives as funcol

        self.counts: collections.Counter[str] = collections.Counter()
        self.active = False
        for module, prefix, names in ((dist, "", COLLECTIVES), (funcol, "funcol.", FUNCTIONAL_COLLECTIVES)):
            for name in names:
                original = getattr(module, name, None)
                if original is not None:
                    setattr(module, name, self._wrap(prefix + name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.counts[name] += 1
            return original(*args, **kwargs)

        return counted

    def start(self) -> None:
        self.counts.clear()
        self.active = True

    def stop(self) -> dict[str, int]:
        self.active = False
        return dict(self.counts)


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), bool(), float() of a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _shard_model(model: nn.Module, mesh: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    for child in model:
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)


def functional(out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    counter = CollectiveCounter()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    scale = 1024.0
    cases = {}
    for norm_type in (2.0, math.inf):
        for case in ("finite", "noclip", "nan_on_rank1", "inf_loss_on_rank0"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 17), nn.Tanh(), nn.Linear(17, 3), nn.Linear(3, 1))  # uneven shards
            ref = copy.deepcopy(model)
            _shard_model(model, mesh)
            g = torch.Generator().manual_seed(1)
            for p_ref, p in zip(ref.parameters(), model.parameters()):
                full = torch.randn(p_ref.shape, generator=g) * scale
                p_ref.grad = full.clone()
                p.grad = distribute_tensor(full, mesh, [Shard(0)])
            if case == "nan_on_rank1" and rank == 1:
                model[0].weight.grad.to_local().view(-1)[0] = math.nan  # this rank's shard only
            before = [p.grad.full_tensor() for p in model.parameters()]
            loss = torch.tensor(math.inf if case == "inf_loss_on_rank0" and rank == 0 else 0.5)
            max_norm = 1e9 if case == "noclip" else 0.1
            inv_scale = torch.full((), 1 / scale)
            found_inf = torch.zeros(())
            reads = HostReads()
            counter.start()
            with reads:
                total = mopt_fast.unscale_clip_grad_norm_(model.parameters(), max_norm, inv_scale, found_inf,
                                                          norm_type, loss=loss)
            collectives = counter.stop()
            row: dict[str, Any] = {"collectives": collectives, "host_reads": reads.count,
                                   "found_inf": found_inf.item(), "total_is_nan": bool(total.isnan())}
            if case in ("finite", "noclip"):
                for p in ref.parameters():
                    p.grad.mul_(1 / scale)
                ref_total = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type)
                torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=0)
                for p_ref, p in zip(ref.parameters(), model.parameters()):
                    torch.testing.assert_close(p.grad.full_tensor(), p_ref.grad, rtol=1e-6, atol=1e-7)
                row["equal_to_unsharded"] = True
            else:  # the step is skipped on every rank: the gradients are left as they were (scaled)
                row["untouched"] = all(torch.equal(p.grad.full_tensor().nan_to_num(), b.nan_to_num())
                                       for p, b in zip(model.parameters(), before))
            cases[f"p={norm_type} {case}"] = row
    cases.update(scaler_steps(mesh, counter))
    cases.update(guard_steps(mesh, counter))
    cases["elementwise on a partly sharded model"] = elementwise_mixed(mesh)
    with open(os.path.join(out, f"functional{rank}.json"), "w") as f:
        json.dump(cases, f)
    from mopt_fast.trainer.strategies import _wait_until_gloo_threads_idle

    dist.destroy_process_group()
    _wait_until_gloo_threads_idle()


def scaler_steps(mesh: Any, counter: CollectiveCounter) -> dict[str, dict[str, Any]]:
    """mopt_fast.amp.GradScaler with torch's fused Adam on an FSDP2 model, three steps of
    unscale_clip_grad_norm_ + step + update, a NaN in rank 1's shard at the second: the clip
    factor goes into the optimizer's grad_scale, found_inf into its step (no gradient rewritten),
    in one all-reduce per step."""
    from mopt_fast.amp import GradScaler

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 2))
    _shard_model(model, mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    scaler = GradScaler("cpu", init_scale=256.0)
    g = torch.Generator().manual_seed(2 + dist.get_rank())
    steps = {}
    for step in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(4, 8, generator=g)).float().pow(2).mean()
        scaler.scale(loss).backward()
        if step == 1 and dist.get_rank() == 1:
            model[1].bias.grad.to_local().fill_(math.nan)
        before = [p.to_local().clone() for p in model.parameters()]
        counter.start()
        reads = HostReads()
        with reads:  # the clip: norm, found_inf and clip factor stay on the device
            scaler.unscale_clip_grad_norm_(opt, 0.1)
        scaler.step(opt)
        scaler.update()
        collectives = counter.stop()
        changed = [not torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before)]
        steps[f"scaler fused step {step}"] = {"collectives": collectives, "changed": changed,
                                               "scale": scaler.get_scale(), "clip_host_reads": reads.count}
    return steps


def elementwise_mixed(mesh: Any) -> dict[str, Any]:
    """scale_grads_ and clip_grad_value_ over DTensor gradients beside plain ones (a model
    partly wrapped by fully_shard): each works on this rank's shards and the plain tensors, as
    torch's own functions do on the unsharded gradients; no norm, so no layout is refused."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 2))
    ref = copy.deepcopy(model)
    fully_shard(model[0], mesh=mesh)
    g = torch.Generator().manual_seed(3)
    for p_ref, p in zip(ref.parameters(), model.parameters()):
        full = torch.randn(p_ref.shape, generator=g)
        p_ref.grad = full.clone()
        p.grad = distribute_tensor(full, mesh, [Shard(0)]) if isinstance(p, DTensor) else full.clone()
    kinds = sorted({type(p.grad).__name__ for p in model.parameters()})
    mopt_fast.scale_grads_(model.parameters(), 0.5)
    mopt_fast.clip_grad_value_(model.parameters(), 0.3)
    for p in ref.parameters():
        p.grad.mul_(0.5)
    torch.nn.utils.clip_grad_value_(ref.parameters(), 0.3)
    equal = all(torch.equal(p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad, p_ref.grad)
                for p, p_ref in zip(model.parameters(), ref.parameters()))
    return {"kinds": kinds, "equal_to_torch": equal}


def guard_steps(mesh: Any, counter: CollectiveCounter) -> dict[str, dict[str, Any]]:
    """mopt_fast.StepGuard on an FSDP2 model, with torch's fused Adam (the flag as its found_inf)
    and with foreach AdamW (stepped, then put back shard by shard), three steps each, a NaN in
    rank 1's shard at the second: norm and flag in one all-reduce per step, so both ranks skip it.
    The host reads of each guarded step are compared with those of the same optimizer's plain
    step on an unguarded copy (torch's CPU optimizers read their step count themselves)."""
    steps = {}
    for name, make in (("fused", lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True)),
                       ("foreach", lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True))):
        models, opts = [], []
        for _ in range(2):  # guarded, plain
            torch.manual_seed(0)
            models.append(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 2)))
            _shard_model(models[-1], mesh)
            opts.append(make(models[-1].parameters()))
        model, plain = models
        opt, plain_opt = opts
        guard = mopt_fast.StepGuard()
        g = torch.Generator().manual_seed(2 + dist.get_rank())
        for step in range(3):
            x = torch.randn(4, 8, generator=g)
            for m, o in zip(models, opts):
                o.zero_grad()
                m(x).pow(2).mean().backward()
            if step == 1 and dist.get_rank() == 1:
                model[1].bias.grad.to_local().view(-1)[0] = math.nan
            before = [p.to_local().clone() for p in model.parameters()]
            counter.start()
            reads = HostReads()
            with reads:
                guard.step(opt, max_norm=0.5)
            collectives = counter.stop()
            plain_reads = HostReads()
            with plain_reads:
                plain_opt.step()
            changed = [not torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before)]
            steps[f"guard {name} step {step}"] = {
                "collectives": collectives, "changed": changed,
                "host_reads_added": reads.count - plain_reads.count,
                "finite": all(bool(torch.isfinite(p.to_local()).all()) for p in model.parameters()),
                "skipped": guard.skipped_steps.item()}
    return steps


FULL_BATCH = 16
BATCHES = 6
NAN_STEP, LOSS_STEP = 1, 3


def data() -> DataLoader:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(FULL_BATCH * BATCHES, 8, generator=g)
    y = x @ torch.randn(8, 2, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=FULL_BATCH // 2, shuffle=False)


class Regressor(mopt_fast.LightningModule):
    """Logs nothing across ranks (a sync_dist log would be an all-reduce of its own). Under FSDP
    (`faults`), at global step NAN_STEP rank 1 alone puts a NaN into its gradient shard, and at
    LOSS_STEP rank 0 alone returns an inf loss whose gradients are finite; in one process
    (`faults` False) the same happens on the single rank."""

    def __init__(self, faults: bool, sharded: bool = True, nan_fault: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))  # every shard non-empty
        self.faults = faults
        self.sharded = sharded
        self.nan_fault = nan_fault

    def _on(self, step: int, rank: int) -> bool:
        return self.faults and self.global_step == step and self.trainer.global_rank == (rank if self.sharded else 0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self._on(LOSS_STEP, 0):
            loss = loss + math.inf  # inf loss, finite gradients
        return loss

    def on_after_backward(self) -> None:
        if self.nan_fault and self._on(NAN_STEP, 1):
            with torch.no_grad():
                grad = self.net[2].bias.grad
                (grad.to_local() if self.sharded else grad)[0] = math.nan  # this rank's shard only

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor), or a DDP replica's parameter."""
    return t.to_local() if hasattr(t, "to_local") else t.detach()


class Record(mopt_fast.Callback):
    def __init__(self, counter: CollectiveCounter) -> None:
        self.counter = counter
        self.steps: list[dict[str, Any]] = []
        self.before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.before = [_local(p).clone() for p in pl_module.parameters()]
        self.counter.start()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        collectives = self.counter.stop()
        changed = [not torch.equal(_local(p), b) for p, b in zip(pl_module.parameters(), self.before)]
        scaler = trainer.scaler
        self.steps.append({"collectives": collectives, "changed": changed,
                           "scale": scaler.get_scale() if scaler is not None else None})


def _plugins(precision: str) -> list[Any]:
    """16-mixed on the CPU, which precision="16-mixed" turns into bf16-mixed (as Lightning does):
    the plugin given as such, with a small first scale so that the first steps are not skipped."""
    from mopt_fast.amp import GradScaler
    from mopt_fast.plugins import MixedPrecision

    if precision != "16-mixed":
        return []
    return [MixedPrecision("16-mixed", "cpu", GradScaler("cpu", init_scale=256.0), skip_nonfinite_loss=True)]


def trainer(out: str, precision: str, faults: bool, strategy: str) -> None:
    """FSDP2, or DDP (where a NaN put into one rank's gradients after DDP's all-reduce would be
    the test's own doing: DDP gets the inf-loss fault only)."""
    from mopt_fast.trainer.strategies import DDPStrategy, FSDPStrategy

    torch.set_num_threads(1)
    counter = CollectiveCounter()
    plugins = _plugins(precision)
    record = Record(counter)
    model = Regressor(faults, nan_fault=strategy == "fsdp")
    timeout = datetime.timedelta(seconds=60)
    trainer = mopt_fast.Trainer(
        accelerator="cpu", strategy=FSDPStrategy(timeout=timeout) if strategy == "fsdp" else DDPStrategy(timeout=timeout),
        devices=2,
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=0.05, plugins=plugins, callbacks=[record],
    )
    trainer.fit(model, data())
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(out, f"trainer{trainer.global_rank}.pt"))
    with open(os.path.join(out, f"trainer{trainer.global_rank}.json"), "w") as f:
        json.dump(record.steps, f)


def reference(precision: str, faults: bool, nan_fault: bool = True) -> dict[str, torch.Tensor]:
    """One process on the full batches (same module, same clipping): what both ranks must end with."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(FULL_BATCH * BATCHES, 8, generator=g)
    y = x @ torch.randn(8, 2, generator=g)
    plugins = _plugins(precision)
    model = Regressor(faults, sharded=False, nan_fault=nan_fault)
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=0.05,
                                plugins=plugins)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=FULL_BATCH, shuffle=False))
    return model.state_dict()


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["functional", "trainer"])
    parser.add_argument("out")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--strategy", default="fsdp", choices=["fsdp", "ddp"])
    args = parser.parse_args()
    if args.mode == "functional":
        functional(args.out)
    else:
        trainer(args.out, args.precision, args.faults, args.strategy)
    sys.exit(0)
