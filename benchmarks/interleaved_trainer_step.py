"""Interleaved per-step timing of the Trainer workloads in test_bench_trainer.py.

    python benchmarks/interleaved_trainer_step.py [--rounds 7]

pytest-benchmark runs one implementation after another, so on a shared machine a slow minute
lands on whichever ran then. Here every round runs each implementation once, short then long,
in turn; the per-step time is (median long - median short) / (long - short).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_bench_trainer as bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workloads", default="gan,lm")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    impls = ["loop", "mopt_fast"]
    try:
        import lightning  # noqa: F401

        impls.append("lightning")
    except ImportError:
        pass
    for workload in args.workloads.split(","):
        short, long = bench.STEPS[workload]
        times: dict[tuple[str, int], list[float]] = {(i, n): [] for i in impls for n in (short, long)}
        for impl in impls:
            bench.run(workload, impl, 2)  # warm-up
        for _ in range(args.rounds):
            for impl in impls:
                for n in (short, long):
                    t0 = time.perf_counter()
                    bench.run(workload, impl, n)
                    times[(impl, n)].append(time.perf_counter() - t0)
        per = {i: (statistics.median(times[(i, long)]) - statistics.median(times[(i, short)])) / (long - short)
               for i in impls}
        print(f"{workload}: per-step time, median of {args.rounds} interleaved rounds, 1 thread")
        for i in impls:
            print(f"  {i:<10} {per[i] * 1e6:9.0f} µs/step  {per[i] / per['loop']:.3f}x loop  "
                  f"overhead {(per[i] - per['loop']) * 1e6:+.0f} µs/step")


if __name__ == "__main__":
    main()
