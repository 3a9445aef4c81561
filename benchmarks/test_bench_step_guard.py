"""A guarded, clipped bf16 optimizer step (torch's fused AdamW), three ways:

    torch_unguarded  clip_grad_norm_(foreach) + optimizer.step(): what bf16 training does today,
                     no protection (a NaN gradient reaches every weight)
    torch            the same, stepping only `if torch.isfinite(norm)`: the usual guard, one
                     device-to-host sync per step (free on the CPU, a pipeline stall on a GPU);
                     the baseline of benchmarks/report.py's ratio
    mopt_guard       mopt_fast.StepGuard().step(optimizer, max_norm): one fused read pass gives
                     norm and flag, the clip factor and the flag go to the fused optimizer
                     (grad_scale, found_inf): no gradient rewritten, no sync

Bytes the step must move at the least: one read pass over the gradients (the norm is needed
before any update) plus the fused AdamW update (read gradient, read and write parameter and both
moments: 7 passes), 8 passes over numel bf16 values; torch_unguarded makes 10 (the clip reads,
then reads and writes). Gradients are restored before every round.
"""
from __future__ import annotations

import pytest
import torch
from grad_sets import make_params, numel

import mopt_fast

SETS = ["gpt2_124m", "many_small"]
ROUNDS = {"gpt2_124m": 5, "many_small": 30}
MAX_NORM = 1e-3  # below every norm here: the clip always scales
_STATE: dict = {}


def shared(set_name: str):
    if set_name not in _STATE:
        _STATE.clear()
        params = make_params(set_name, torch.bfloat16)
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        optimizer.step()  # the moments exist before the first timed round
        _STATE[set_name] = (params, optimizer, [p.grad.clone() for p in params])
    return _STATE[set_name]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("impl", ["torch_unguarded", "torch", "mopt_guard"])
def test_guarded_clipped_step(benchmark, impl, set_name):
    if impl == "mopt_guard" and "cpu" not in mopt_fast.available_backends():
        pytest.skip("compiled CPU backend not built")
    params, optimizer, originals = shared(set_name)
    grads = [p.grad for p in params]
    guard = mopt_fast.StepGuard()
    benchmark.group = f"guarded_clipped_step/{set_name}"
    benchmark.extra_info.update(impl=impl, case="guarded_clipped_step", set=set_name, dtype="bf16",
                                bytes=numel(params) * 2 * 8)

    def reset():
        torch._foreach_copy_(grads, originals)

    def unguarded():
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
        optimizer.step()

    def synced():
        total = torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
        if torch.isfinite(total):
            optimizer.step()

    def guarded():
        guard.step(optimizer, max_norm=MAX_NORM)

    impls = {"torch_unguarded": unguarded, "torch": synced, "mopt_guard": guarded}
    benchmark.pedantic(impls[impl], setup=reset, rounds=ROUNDS[set_name], iterations=1, warmup_rounds=1)
