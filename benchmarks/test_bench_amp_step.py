"""A whole AMP optimizer step with clipping, torch.amp.GradScaler against mopt_fast.amp.GradScaler:

    torch:     scaler.unscale_(opt); clip_grad_norm_(params, 1.0, foreach=True); scaler.step(opt); scaler.update()
    mopt_fast: scaler.unscale_clip_grad_norm_(opt, 1.0); scaler.step(opt); scaler.update()

with torch's fused Adam (which takes the unscale x clip factor as its grad_scale, so mopt_fast
rewrites no gradient) and with foreach SGD. Both scalers drive the very same model, optimizer and
gradients (restored before every round), so memory placement cannot favour either.
"""
from __future__ import annotations

import pytest
import torch
from grad_sets import make_params, numel

import mopt_fast
from mopt_fast.amp import GradScaler

SETS = ["gpt2_124m", "many_small"]
ROUNDS = {"gpt2_124m": 6, "many_small": 40}
_STATE: dict = {}


def shared(set_name: str, opt_kind: str):
    key = (set_name, opt_kind)
    if key not in _STATE:
        _STATE.clear()
        params = make_params(set_name, torch.float32)
        if opt_kind == "adam_fused":
            opt = torch.optim.Adam(params, lr=1e-6, fused=True)
        else:
            opt = torch.optim.SGD(params, lr=1e-6, momentum=0.9, foreach=True)
        _STATE[key] = (params, opt, [p.grad.clone() for p in params])
    return _STATE[key]


@pytest.mark.parametrize("opt_kind", ["adam_fused", "sgd_foreach"])
@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", ["torch", "mopt_cpu"])
def test_amp_step(benchmark, impl, set_name, opt_kind):
    if impl == "mopt_cpu" and "cpu" not in mopt_fast.available_backends():
        pytest.skip("compiled CPU backend not built")
    params, opt, originals = shared(set_name, opt_kind)
    grads = [p.grad for p in params]
    scaler = (torch.amp.GradScaler if impl == "torch" else GradScaler)("cpu", init_scale=2.0**16)
    scaler.scale(torch.ones(()))  # creates the scale tensor, as the first scaled loss would
    benchmark.group = f"amp_step/{set_name}/{opt_kind}"
    benchmark.extra_info.update(impl=impl, case=f"amp_step_{opt_kind}", set=set_name, dtype="fp32",
                                bytes=numel(params) * 4)

    def reset():
        torch._foreach_copy_(grads, originals)

    def torch_step():
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        scaler.step(opt)
        scaler.update()

    def mopt_step():
        scaler.unscale_clip_grad_norm_(opt, 1.0)
        scaler.step(opt)
        scaler.update()

    benchmark.pedantic(torch_step if impl == "torch" else mopt_step, setup=reset,
                       rounds=ROUNDS[set_name], iterations=1, warmup_rounds=1)
