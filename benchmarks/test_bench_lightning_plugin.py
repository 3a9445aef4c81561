"""Per-step cost of Lightning's own Trainer with and without mopt_fast's precision plugin.

The workloads of test_bench_trainer.py, on one thread, each trained three ways:

- "loop": a hand-written torch loop (torch's GradScaler recipe under 16-mixed);
- "lightning": ``lightning.pytorch.Trainer`` with its own precision plugin;
- "lightning+mopt_fast": the same Trainer with ``plugins=[mopt_fast.lightning.<plugin>]``.

Workloads:

- "gan": the demo's GAN, manual optimization, 32-true, nothing clipped, ``zero_grad()`` sets None:
  the plugin has nothing to fuse, so this measures what it costs;
- "lm": the small transformer LM, bf16-mixed, clip-by-norm 1.0, AdamW;
- "lm16": the same LM under 16-mixed (the plugins built directly, which Lightning allows on the
  CPU): Lightning unscales, then clips (norm, then scaling); mopt_fast makes one read pass
  (unscale + inf check + norm) and one scaling pass.

`report.py` turns the short and long runs into seconds per step with the set-up removed and divides
by the loop's and by Lightning's time; `interleaved_trainer_step.py --lightning-plugin` interleaves
the runs round by round, which is steadier on a shared machine.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import test_bench_trainer as trainer_bench  # noqa: E402
from test_bench_trainer import VOCAB, gan_2d, lm_data, make_lm, quiet_fit  # noqa: E402

IMPLS = ["loop", "lightning", "lightning+mopt_fast"]
WORKLOADS = ["gan", "lm", "lm16"]
# fp16 matmuls are slow on most CPUs (~0.7 s per lm16 step here), hence its short runs.
STEPS = {"gan": (8, 40), "lm": (2, 10), "lm16": (1, 4)}
PRECISION = {"gan": "32-true", "lm": "bf16-mixed", "lm16": "16-mixed"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lightning_plugin(workload: str, impl: str) -> Any:
    """The precision plugin for `impl`: Lightning's own or mopt_fast's, for the workload's precision."""
    precision = PRECISION[workload]
    if impl == "lightning+mopt_fast":
        from mopt_fast.lightning import precision_plugin

        return precision_plugin(precision, "cpu")
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    return Precision() if precision == "32-true" else MixedPrecision(precision, "cpu")


def lm16_loop(steps: int) -> None:
    """The LM under 16-mixed written out with torch's GradScaler: unscale_, clip, step, update."""
    import mopt_fast

    torch.manual_seed(0)
    model = make_lm(mopt_fast.LightningModule)()
    opt = model.configure_optimizers()
    scaler = torch.amp.GradScaler("cpu")
    for i, (tokens,) in enumerate(lm_data()):
        if i == steps:
            break
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()


def run(workload: str, impl: str, steps: int) -> None:
    """Train a fresh model of `workload` for `steps` batches the `impl` way."""
    if impl == "loop":
        if workload == "lm16":
            lm16_loop(steps)
        else:
            trainer_bench.run(workload, "loop", steps)
        return
    import lightning.pytorch as pl

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    plugin = lightning_plugin(workload, impl)
    if workload == "gan":
        quiet_fit(pl.Trainer, gan_2d.make_gan(pl.LightningModule)(), gan_2d.loader(), steps, plugins=[plugin])
    else:
        quiet_fit(pl.Trainer, make_lm(pl.LightningModule)(), lm_data(), steps, plugins=[plugin], gradient_clip_val=1.0)


@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_lightning_plugin_step(benchmark, workload: str, impl: str, length: str) -> None:
    pytest.importorskip("lightning.pytorch")
    steps = STEPS[workload][0 if length == "short" else 1]
    run(workload, impl, 2)  # warm-up
    benchmark.group = f"lightning-plugin-{workload}"
    benchmark.extra_info.update(kind="lightning_plugin", workload=workload, impl=impl, steps=steps)
    benchmark.pedantic(run, args=(workload, impl, steps), rounds=5 if workload == "gan" else 3, iterations=1)
