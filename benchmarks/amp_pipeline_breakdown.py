"""Where the time of the AMP pipeline (unscale + inf/NaN check + clip-by-norm) goes on one gradient
set: the whole call, its kernel alone, the per-call cost around the kernel, and the roofline (torch's
read pass and in-place pass over one flat buffer of the same bytes), interleaved round by round.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/amp_pipeline_breakdown.py [--set many_small] [--dtype fp32] [--layout views]

--layout: "separate" (default) gives each gradient its own allocation, as autograd does;
"views" makes the gradients views into one buffer, as DDP's gradient buckets with
gradient_as_bucket_view=True (or FSDP's flat parameters) do. On the 2-core machine the separate
allocations alone cost the read pass about 200 µs of 500 on many_small fp32: the hardware
streams one buffer faster than 1000 separate 16 KiB ones.

Rows:
  roofline       torch.linalg.vector_norm(flat) + flat.mul_(c): one read pass and one in-place pass
  kernel         torch.ops.mopt_fast.unscale_clip_inplace(grads, ...) on a prepared list: both passes
  kernel_read    torch.ops.mopt_fast.unscale_norm(...) (the read pass alone)
  mopt_fast      mopt_fast.unscale_clip_grad_norm_(params, ...): the public call (reads .grad, checks)
  torch          torch._amp_foreach_non_finite_check_and_unscale_ + clip_grad_norm_(foreach=True)
  empty_call     mopt_fast.unscale_clip_grad_norm_ on 1000 one-element gradients: the per-call cost
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_NORM = 1e-3  # small enough that clipping always scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="many_small")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--layout", default="separate", choices=["separate", "views"])
    args = parser.parse_args()
    params = make_params(args.set, DTYPES[args.dtype])
    if args.layout == "views":  # the same values, in one buffer
        bucket = torch.cat([p.grad.flatten() for p in params])
        offset = 0
        for p in params:
            p.grad = bucket[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    grads = [p.grad for p in params]
    originals = [g.clone() for g in grads]
    nbytes = sum(g.nbytes for g in grads)
    flat = torch.randn(nbytes // 4)
    flat_orig = flat.clone()
    tiny = [torch.nn.Parameter(torch.zeros(1)) for _ in range(len(params))]
    for t in tiny:
        t.grad = torch.randn(1)
    inv = torch.full((1,), 1.0 / 65536)
    found = torch.zeros(1)
    ops = torch.ops.mopt_fast

    impls = {
        "roofline": lambda: (torch.linalg.vector_norm(flat), flat.mul_(0.5)),
        "kernel": lambda: ops.unscale_clip_inplace(grads, inv, found, MAX_NORM, 2.0),
        "kernel_read": lambda: ops.unscale_norm(grads, inv, found, 2.0, False),
        "mopt_fast": lambda: mopt_fast.unscale_clip_grad_norm_(params, MAX_NORM, inv, found),
        "torch": lambda: (torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv),
                          torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)),
        "empty_call": lambda: mopt_fast.unscale_clip_grad_norm_(tiny, MAX_NORM, inv, found),
    }
    times: dict[str, list[float]] = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.rounds + 2):
        for name in names[r % len(names):] + names[: r % len(names)]:
            torch._foreach_copy_(grads, originals)
            flat.copy_(flat_orig)
            found.zero_()
            s = time.perf_counter()
            impls[name]()
            e = time.perf_counter()
            if r >= 2:
                times[name].append(e - s)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    roof = med["roofline"]
    print(f"{args.set} {args.dtype} ({args.layout}): {len(grads)} tensors, {nbytes / 2**20:.1f} MiB; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds, medians")
    print("| row | µs | x roofline |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.0f} | {v / roof:.2f} |")


if __name__ == "__main__":
    main()
