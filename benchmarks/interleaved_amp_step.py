"""Interleaved timing of a whole AMP step with clipping (unscale + inf/NaN check + clip-by-norm +
optimizer step + scaler update; backward excluded): torch.amp.GradScaler + clip_grad_norm_
against mopt_fast.amp.GradScaler.unscale_clip_grad_norm_, and the floor: the optimizer step
alone plus one read pass over the gradients (the clip factor needs the global norm before any
update, so no step can do with less). Implementations alternate round by round on the same
model, so slow phases of a shared machine hit all equally. The pytest-benchmark version is
test_bench_amp_step.py; this is its cross-check where timings drift.

    .venv/bin/python benchmarks/interleaved_amp_step.py [--sets gpt2_124m many_small] [--rounds 10]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grad_sets import make_params  # noqa: E402

import mopt_fast  # noqa: E402
from mopt_fast.amp import GradScaler  # noqa: E402


def time_step(set_name: str, kind: str, rounds: int) -> dict[str, float]:
    """Median ms per step of torch, mopt_fast and the floor, rotating which goes first."""
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

    def floor_step():
        mopt_fast.get_total_norm(grads)  # the one read pass
        opt.step()

    impls = {"torch": torch_step, "mopt_fast": mopt_step, "floor": floor_step}
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds + 1):
        for name in names[r % 3:] + names[: r % 3]:
            torch._foreach_copy_(grads, orig)
            s = time.perf_counter()
            impls[name]()
            e = time.perf_counter()
            if r:
                times[name].append(e - s)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["gpt2_124m", "many_small"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| set | optimizer | floor | torch GradScaler + clip_grad_norm_ | x floor "
          "| mopt_fast unscale_clip_grad_norm_ | x floor |")
    print("|---|---|---|---|---|---|---|")
    for set_name in args.sets:
        for kind in ("adam_fused", "sgd_foreach"):
            t = time_step(set_name, kind, args.rounds)
            f = t["floor"]
            print(f"| {set_name} | {kind} | {f:.2f} ms | {t['torch']:.2f} ms | {t['torch'] / f:.2f} "
                  f"| {t['mopt_fast']:.2f} ms | {t['mopt_fast'] / f:.2f} |")


if __name__ == "__main__":
    main()
