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


if __name__ == "__main__":
    print(table(sys.argv[1], markdown="--markdown" in sys.argv))
