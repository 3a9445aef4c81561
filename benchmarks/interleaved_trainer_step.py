"""Interleaved per-step timing of the Trainer workloads in test_bench_trainer.py.

    python benchmarks/interleaved_trainer_step.py [--rounds 7] [--workloads gan,lm]
    python benchmarks/interleaved_trainer_step.py --lightning-plugin [--workloads gan,lm,lm16]

pytest-benchmark runs one implementation after another, so on a shared machine a slow minute
lands on whichever ran then. Here every round runs each implementation once, short then long,
in turn; the per-step time is (median long - median short) / (long - short).

By default: a hand-written loop, mopt_fast.Trainer and Lightning's Trainer. With
--lightning-plugin, test_bench_lightning_plugin.py's: the loop, Lightning's Trainer with its own
precision plugin and with mopt_fast.lightning's, also as a ratio to Lightning's own.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
import test_bench_lightning_plugin as plugin_bench  # noqa: E402
import test_bench_trainer as bench  # noqa: E402


def lightning_installed() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def per_step_times(run: Callable[[str, str, int], None], workload: str, impls: list[str], steps: tuple[int, int],
                   rounds: int) -> dict[str, float]:
    short, long = steps
    times: dict[tuple[str, int], list[float]] = {(i, n): [] for i in impls for n in (short, long)}
    for impl in impls:
        run(workload, impl, 2)  # warm-up
    for _ in range(rounds):
        for impl in impls:
            for n in (short, long):
                t0 = time.perf_counter()
                run(workload, impl, n)
                times[(impl, n)].append(time.perf_counter() - t0)
    return {i: (statistics.median(times[(i, long)]) - statistics.median(times[(i, short)])) / (long - short)
            for i in impls}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workloads", default=None, help="comma-separated (default: all of the chosen set)")
    ap.add_argument("--lightning-plugin", action="store_true",
                    help="Lightning's Trainer with and without mopt_fast.lightning's precision plugin")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if args.lightning_plugin:
        if not lightning_installed():
            raise SystemExit("--lightning-plugin needs the 'lightning' package")
        run, impls, all_steps = plugin_bench.run, plugin_bench.IMPLS, plugin_bench.STEPS
        workloads = args.workloads or ",".join(plugin_bench.WORKLOADS)
    else:
        run, impls, all_steps = bench.run, ["loop", "mopt_fast"], bench.STEPS
        if lightning_installed():
            impls.append("lightning")
        workloads = args.workloads or "gan,lm"
    for workload in workloads.split(","):
        per = per_step_times(run, workload, impls, all_steps[workload], args.rounds)
        print(f"{workload}: per-step time, median of {args.rounds} interleaved rounds, 1 thread")
        for i in impls:
            line = (f"  {i:<20} {per[i] * 1e6:9.0f} µs/step  {per[i] / per['loop']:.3f}x loop  "
                    f"overhead {(per[i] - per['loop']) * 1e6:+.0f} µs/step")
            if args.lightning_plugin:
                line += f"  {per[i] / per['lightning']:.3f}x lightning"
            print(line, flush=True)


if __name__ == "__main__":
    main()
