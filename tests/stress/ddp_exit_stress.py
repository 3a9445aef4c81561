"""Launches tests/ddp_child.py again and again and counts the runs that end with a non-zero exit.

    python tests/stress/ddp_exit_stress.py [--runs 100] [--modes manual automatic manual_no_sync]

Each run is a self-launched two-rank gloo DDP fit (rank 0 starts rank 1), as in
tests/test_ddp.py. A rank that aborts at interpreter exit (e.g. "terminate called without an
active exception", exit -6) after a fit that trained correctly makes rank 0 exit non-zero, so it
counts here. The modes take turns. Prints every failure with the end of its stderr, then a
summary line; the exit status is 1 when any run failed.

Not collected by pytest (not a test_*.py file): a hundred runs take minutes.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ddp_child.py")


def launch(mode: str, timeout: float) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="ddp-exit-stress-") as out:
        try:
            proc = subprocess.run([sys.executable, CHILD, mode, out], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            return 124, stderr + f"\n(timed out after {timeout:.0f} s)"
        missing = [r for r in (0, 1) if not os.path.isfile(os.path.join(out, f"rank{r}.pt"))]
        if proc.returncode == 0 and missing:  # a clean exit must also have trained
            return 1, proc.stderr + f"\n(exit 0 but no rank{missing}.pt written)"
        return proc.returncode, proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--modes", nargs="+", default=["manual", "automatic", "manual_no_sync"])
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    args = ap.parse_args()
    failures: list[tuple[int, str, int, str]] = []
    start = time.monotonic()
    for i in range(args.runs):
        mode = args.modes[i % len(args.modes)]
        rc, stderr = launch(mode, args.timeout)
        if rc != 0:
            failures.append((i, mode, rc, stderr))
            tail = "\n    ".join(stderr.strip().splitlines()[-8:])
            print(f"run {i} ({mode}): exit {rc}\n    {tail}", flush=True)
        elif (i + 1) % 10 == 0:
            print(f"{i + 1} runs, {len(failures)} failed, {time.monotonic() - start:.0f} s", flush=True)
    wall = time.monotonic() - start
    # Rank 0 reports a failed worker's exit code in its message; -6 is SIGABRT.
    worker_codes = collections.Counter(
        code for *_, stderr in failures for m in re.finditer(r"exit codes \[([^\]]*)\]", stderr)
        for code in m.group(1).split(", "))
    aborts = sum("terminate called" in stderr for *_, stderr in failures)
    print(f"{args.runs} runs ({', '.join(args.modes)}): {len(failures)} failed "
          f"({aborts} with 'terminate called'; worker exit codes {dict(worker_codes)}), wall {wall:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
