"""What a user might reach for instead of mopt_fast: torch.compile of torch's own AMP clip
(unscale + inf/NaN check + clip_grad_norm_), against torch eager and mopt_fast eager, on the CPU.
Reports the first call (compile time included) and the steady state, interleaved round by round.

    .venv/bin/python benchmarks/compare_compile.py [--sets gpt2_124m many_small] [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grad_sets import make_params  # noqa: E402

import mopt_fast  # noqa: E402

MAX_NORM = 1e-3  # small enough that the clip always scales


def torch_amp_clip(params, grads, inv, found):
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    return torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)


def mopt_amp_clip(params, grads, inv, found):
    return mopt_fast.unscale_clip_grad_norm_(params, MAX_NORM, inv, found)


def measure(set_name: str, rounds: int) -> list[tuple[str, float, float]]:
    params = make_params(set_name, torch.float32)
    grads = [p.grad for p in params]
    originals = [g.clone() for g in grads]
    inv = torch.full((1,), 1.0 / 65536)
    found = torch.zeros(1)
    torch._dynamo.reset()
    impls = {
        "torch eager": torch_amp_clip,
        "torch.compile(torch)": torch.compile(torch_amp_clip),
        "mopt_fast eager": mopt_amp_clip,
    }

    def timed(fn) -> float:
        torch._foreach_copy_(grads, originals)
        found.zero_()
        start = time.perf_counter()
        fn(params, grads, inv, found)
        return time.perf_counter() - start

    first = {name: timed(fn) for name, fn in impls.items()}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(rounds):
        order = list(impls.items()) if r % 2 else list(reversed(impls.items()))
        for name, fn in order:
            times[name].append(timed(fn))
    return [(name, first[name], statistics.median(times[name])) for name in impls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["gpt2_124m", "many_small"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| set | implementation | first call (s) | steady state (ms) | x torch eager |")
    print("|---|---|---|---|---|")
    for set_name in args.sets:
        rows = measure(set_name, args.rounds)
        eager = rows[0][2]
        for name, first, steady in rows:
            print(f"| {set_name} | {name} | {first:.2f} | {steady * 1e3:.2f} | {eager / steady:.2f} |")


if __name__ == "__main__":
    main()
