"""Where the whole AMP step's time goes beyond its floor (see interleaved_amp_step.py): the read
pass with and without the unscale + inf check, and torch's fused Adam with and without the
grad_scale / found_inf it takes from mopt_fast.amp.GradScaler, interleaved on the same gradients.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/amp_step_parts.py [--set gpt2_124m] [--rounds 10]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="gpt2_124m")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    params = make_params(args.set, torch.float32)
    grads = [p.grad for p in params]
    originals = [g.clone() for g in grads]
    opt = torch.optim.Adam(params, lr=1e-6, fused=True)
    inv_scale, found_inf = torch.full((1,), 1.0 / 65536), torch.zeros(1)
    grad_scale, adam_found_inf = torch.tensor(65536.0), torch.tensor(0.0)

    def adam_with_grad_scale() -> None:
        opt.grad_scale, opt.found_inf = grad_scale, adam_found_inf  # what GradScaler.step hands it
        try:
            opt.step()
        finally:
            opt.grad_scale = opt.found_inf = None

    impls = {
        "read pass: norm": lambda: mopt_fast.get_total_norm(grads),
        "read pass: unscale + inf check + norm": lambda: torch.ops.mopt_fast.unscale_norm(
            grads, inv_scale, found_inf, 2.0, False),
        "fused Adam": opt.step,
        "fused Adam with grad_scale / found_inf": adam_with_grad_scale,
    }
    times: dict[str, list[float]] = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.rounds + 2):
        for name in names[r % len(names):] + names[: r % len(names)]:
            torch._foreach_copy_(grads, originals)
            s = time.perf_counter()
            impls[name]()
            e = time.perf_counter()
            if r >= 2:
                times[name].append(e - s)
    print(f"{args.set} fp32, torch {torch.__version__}, {torch.get_num_threads()} threads, medians")
    print("| part | ms |")
    print("|---|---|")
    for name in names:
        print(f"| {name} | {statistics.median(times[name]) * 1e3:.2f} |")


if __name__ == "__main__":
    main()
