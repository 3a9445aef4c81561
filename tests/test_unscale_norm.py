"""unscale_clip_grad_norm_: the fused read pass (`unscale_norm` op) plus one scaling pass."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast
from mopt_fast.registry import kernel

from helpers import (
    assert_close_elementwise,
    build,
    device_of,
    grad_lists,
    has_nonfinite,
    isclose,
    params_with,
    ref_norm,
)


@given(case=grad_lists(), log2_scale=st.integers(0, 16), max_norm=st.floats(1e-2, 1e3),
       p=st.sampled_from([2.0, 1.0, math.inf, 3.0]))
def test_unscale_clip_matches_unscale_then_clip(backend, case, log2_scale, max_norm, p):
    grads = build(*case, device=device_of(backend))
    dev = grads[0].device
    inv = torch.full((1,), 2.0**-log2_scale, device=dev)
    found = torch.zeros(1, device=dev)
    unscaled = [g.double() * inv.item() for g in grads]
    norm64 = ref_norm(unscaled, p)
    coef = min(1.0, max_norm / (norm64 + 1e-6))
    total = mopt_fast.unscale_clip_grad_norm_(params_with(grads), max_norm, inv, found, p)
    assert found.item() == 0.0
    assert isclose(total.item(), norm64, 1e-4)
    for g, u in zip(grads, unscaled):
        e = u * coef
        if g.dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-30)
        else:
            assert_close_elementwise(g, e)


@given(case=grad_lists(nonfinite=True), p=st.sampled_from([2.0, 1.0, math.inf]))
def test_read_pass_writes_nothing(backend, case, p):
    grads = build(*case, device=device_of(backend))
    dev = grads[0].device
    before = [g.clone() for g in grads]
    found = torch.zeros(1, device=dev)
    total, per = kernel("unscale_norm", dev)(grads, torch.full((1,), 0.25, device=dev), found, p, True)
    assert found.item() == float(has_nonfinite(grads))
    assert isclose(total.item(), ref_norm(grads, p) * 0.25, 1e-4)
    for g, b, n in zip(grads, before, per.tolist()):
        assert torch.equal(g.isnan(), b.isnan()) and torch.equal(g.nan_to_num(), b.nan_to_num())
        assert isclose(n, ref_norm([g], p) * 0.25, 1e-4)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_inf_leaves_grads_untouched_and_sets_found_inf(backend, bad):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(51)
    grads = [torch.randn(9000, generator=gen).half().to(dev), torch.randn(77, generator=gen).to(dev)]
    grads[0][8999] = bad
    before = [g.clone() for g in grads]
    found = torch.zeros(1, device=dev)
    mopt_fast.unscale_clip_grad_norm_(params_with(grads), 1.0, torch.full((1,), 1 / 1024, device=dev), found)
    assert found.item() == 1.0
    for g, b in zip(grads, before):
        assert torch.equal(g.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(g), torch.nan_to_num(b))


def test_large_finite_fp16_grads_are_not_flagged(backend):
    # 60000 in fp16 squared overflows fp16 but not the fp32 accumulator: no false inf.
    dev = device_of(backend)
    g = torch.full((5000,), 60000.0, dtype=torch.float16, device=dev)
    g += torch.rand(5000).half().to(dev)
    found = torch.zeros(1, device=dev)
    total = mopt_fast.unscale_clip_grad_norm_(params_with([g]), 1e12, torch.ones(1, device=dev), found)
    assert found.item() == 0.0 and math.isfinite(total.item())
