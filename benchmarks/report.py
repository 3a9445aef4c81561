"""Compact ratio table from a pytest-benchmark JSON file.

    python benchmarks/report.py out/bench.json [--markdown]

Per case (op / gradient set / dtype): the median time of torch and of each mopt_fast backend,
torch's time divided by each backend's (>1: mopt_fast is faster), the effective bandwidth over the
bytes the op must move, and for the AMP pipeline how close the best backend is to the flat-buffer
roofline (CPU runs) or the fraction of the measured device-to-device copy bandwidth it reaches
(GPU runs).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    cases: dict[tuple, dict] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") in ("trainer", "lightning_plugin"):  # the per-step tables below
            continue
        case = "amp_pipeline" if info["case"] == "roofline" else info["case"]
        if info["case"] == "copy":
            # The copy ceiling applies to every op of its set and dtype.
            for other in ("amp_pipeline", "norm", "clip_norm", "clip_value", "scale", "zero", "unscale"):
                cases[(other, info["set"], info["dtype"])]["copy"] = (b["stats"]["median"], info["bytes"])
            continue
        key = (case, info["set"], info["dtype"])
        cases[key][info["impl"]] = (b["stats"]["median"], info["bytes"])
    return data, cases


def table(path: str, markdown: bool = False) -> str:
    data, cases = load(path)
    impls = sorted({i for c in cases.values() for i in c if i.startswith("mopt_")})
    head = ["case", "set", "dtype", "torch ms"]
    for i in impls:
        head += [f"{i} ms", "x torch", "GB/s"]
    has_copy = any("copy" in c for c in cases.values())
    head += ["copy GB/s", "best % of copy"] if has_copy else ["roofline ms", "best/roofline"]
    rows = []
    for key in sorted(cases):
        c = cases[key]
        if "torch" not in c:
            continue
        t_torch, nbytes = c["torch"]
        row = [*key, f"{t_torch * 1e3:.2f}"]
        best = None
        for i in impls:
            if i in c:
                t, nb = c[i]
                best = t if best is None else min(best, t)
                row += [f"{t * 1e3:.2f}", f"{t_torch / t:.2f}", f"{nb / t / 1e9:.1f}"]
            else:
                row += ["-", "-", "-"]
        if has_copy and "copy" in c and best is not None:
            t_copy, copy_bytes = c["copy"]
            copy_bw = copy_bytes / t_copy
            row += [f"{copy_bw / 1e9:.0f}", f"{100 * nbytes / best / copy_bw:.0f}%"]
        elif "roofline" in c and best is not None:
            roof = c["roofline"][0]
            row += [f"{roof * 1e3:.2f}", f"{best / roof:.2f}"]
        else:
            row += ["", ""]
        rows.append(row)
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", mi.get("processor", "?"))
    title = f"{data.get('datetime', '')} | {cpu} | {mi.get('python_version', '')}"
    if markdown:
        out = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*head)] + [fmt.format(*r) for r in rows])


def trainer_table(path: str, markdown: bool = False, kind: str = "trainer") -> str:
    """Seconds per step with the set-up removed, (T(long) - T(short)) / (long - short) on the
    medians, and each implementation's ratio to the hand-written loop (and, for the Lightning
    plugin runs, to Lightning's Trainer with its own plugin)."""
    with open(path) as f:
        data = json.load(f)
    runs: dict[tuple, dict[int, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if info.get("kind") == kind:
            runs[(info["workload"], info["impl"])][info["steps"]] = b["stats"]["median"]
    per_step = {}
    for key, by_steps in runs.items():
        if len(by_steps) == 2:
            (s0, t0), (s1, t1) = sorted(by_steps.items())
            per_step[key] = (t1 - t0) / (s1 - s0)
    if not per_step:
        return ""
    versus_lightning = kind == "lightning_plugin"
    head = ["workload", "impl", "µs/step", "x loop", "overhead µs/step"] + (["x lightning"] if versus_lightning else [])
    rows = []
    for (workload, impl), t in sorted(per_step.items(), key=lambda kv: (kv[0][0], kv[0][1] != "loop", kv[0][1])):
        loop = per_step.get((workload, "loop"))
        row = [workload, impl, f"{t * 1e6:.0f}", f"{t / loop:.3f}" if loop else "-",
               f"{(t - loop) * 1e6:.0f}" if loop else "-"]
        if versus_lightning:
            lightning = per_step.get((workload, "lightning"))
            row.append(f"{t / lightning:.3f}" if lightning else "-")
        rows.append(row)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


if __name__ == "__main__":
    md = "--markdown" in sys.argv
    print(table(sys.argv[1], markdown=md))
    trainer = trainer_table(sys.argv[1], markdown=md)
    if trainer:
        print("\nTrainer per-step time (set-up removed):\n" + trainer)
    plugin = trainer_table(sys.argv[1], markdown=md, kind="lightning_plugin")
    if plugin:
        print("\nLightning's Trainer with and without mopt_fast.lightning, per-step time (set-up removed):\n" + plugin)
