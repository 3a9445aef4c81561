"""Logging per-parameter gradient norms, then clipping by norm, as a Lightning module does in
on_before_optimizer_step:

    torch:     lightning's grad_norm(module, 2) + torch.nn.utils.clip_grad_norm_(params, max_norm)
               (one .norm() per parameter and a stack, then the clip reads every gradient again)
    mopt_cpu:  mopt_fast.grad_norm(module, 2) + mopt_fast.clip_grad_norm_(params, max_norm)
               (one fused read pass gives every norm; the clip reuses its total, then scales)

Bytes the step must move at the least: one read pass + one in-place scaling pass (3 passes over
the gradient bytes); Lightning + torch make 4 (two reads, then read + write). Gradients are
restored before every round.
"""
from __future__ import annotations

import pytest
import torch
from grad_sets import make_params, numel

import mopt_fast

SETS = ["gpt2_124m", "many_small"]
ROUNDS = {"gpt2_124m": 6, "many_small": 30}
MAX_NORM = 1e-3  # below every norm here: the clip always scales
_STATE: dict = {}


def shared(set_name: str):
    if set_name not in _STATE:
        _STATE.clear()
        params = make_params(set_name, torch.float32)
        module = torch.nn.Module()
        for i, p in enumerate(params):
            module.register_parameter(f"p{i}", p)
        _STATE[set_name] = (module, params, [p.grad.clone() for p in params])
    return _STATE[set_name]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", ["torch", "mopt_cpu"])
def test_grad_norm_then_clip(benchmark, impl, set_name):
    if impl == "mopt_cpu" and "cpu" not in mopt_fast.available_backends():
        pytest.skip("compiled CPU backend not built")
    lightning = pytest.importorskip("lightning.pytorch.utilities")
    module, params, originals = shared(set_name)
    grads = [p.grad for p in params]
    benchmark.group = f"grad_norm_then_clip/{set_name}"
    benchmark.extra_info.update(impl=impl, case="grad_norm_then_clip", set=set_name, dtype="fp32",
                                bytes=numel(params) * 4 * 3)

    def reset():
        torch._foreach_copy_(grads, originals)

    def lightning_and_torch():
        lightning.grad_norm(module, 2)
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)

    def mopt():
        mopt_fast.grad_norm(module, 2)
        mopt_fast.clip_grad_norm_(params, MAX_NORM)

    benchmark.pedantic(lightning_and_torch if impl == "torch" else mopt, setup=reset,
                       rounds=ROUNDS[set_name], iterations=1, warmup_rounds=1)
