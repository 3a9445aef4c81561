"""Interleaved timing of a whole AMP step with clipping: torch.amp.GradScaler + clip_grad_norm_
against mopt_fast.amp.GradScaler.unscale_clip_grad_norm_, alternating round by round on the same
model, so slow phases of a shared machine hit both equally. The pytest-benchmark version is
test_bench_amp_step.py; this is its cross-check where timings drift.

    .venv/bin/python benchmarks/interleaved_amp_step.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grad_sets import make_params  # noqa: E402

from mopt_fast.amp import GradScaler  # noqa: E402


def time_pair(set_name: str, kind: str, rounds: int) -> tuple[float, float]:
    """Median ms per step of (torch, mopt_fast), alternating which goes first each round."""
    params = make_params(set_name, torch.float32)
    grads = [p.grad for p in params]
    orig = [g.clone() for g in grads]
    opt = (torch.optim.Adam(params, lr=1e-6, fused=True) if kind == "adam_fused"
           else torch.optim.SGD(params, lr=1e-6, momentum=0.9, foreach=True))
    ts, ms = torch.amp.GradScaler("cpu"), GradScaler("cpu")
    ts.scale(torch.ones(()))
    ms.scale(torch.ones(()))

    def torch_step():
        ts.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        ts.step(opt)
        ts.update()

    def mopt_step():
        ms.unscale_clip_grad_norm_(opt, 1.0)
        ms.step(opt)
        ms.update()

    times = {"torch": [], "mopt": []}
    for r in range(rounds + 1):
        order = (("torch", torch_step), ("mopt", mopt_step)) if r % 2 else (("mopt", mopt_step), ("torch", torch_step))
        for name, f in order:
            torch._foreach_copy_(grads, orig)
            s = time.perf_counter()
            f()
            e = time.perf_counter()
            if r:
                times[name].append(e - s)
    return statistics.median(times["torch"]) * 1e3, statistics.median(times["mopt"]) * 1e3


print("| set | optimizer | torch GradScaler + clip_grad_norm_ | mopt_fast GradScaler.unscale_clip_grad_norm_ | x torch |")
print("|---|---|---|---|---|")
for set_name, rounds in (("gpt2_124m", 10), ("many_small", 40)):
    for kind in ("adam_fused", "sgd_foreach"):
        t, m = time_pair(set_name, kind, rounds)
        print(f"| {set_name} | {kind} | {t:.1f} ms | {m:.1f} ms | {t/m:.2f} |")
