"""unscale_grads_ (the `unscale_inplace` op): torch._amp_foreach_non_finite_check_and_unscale_."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast

from helpers import assert_close_elementwise, build, device_of, grad_lists, has_nonfinite, params_with


@given(case=grad_lists(nonfinite=True), log2_scale=st.integers(-4, 16))
def test_unscale_matches_float64(backend, case, log2_scale):
    grads = build(*case, device=device_of(backend))
    dev = grads[0].device
    inv = torch.full((1,), 2.0**-log2_scale, device=dev)
    found = torch.zeros(1, device=dev)
    expected = [g.double() * inv.item() for g in grads]
    planted = has_nonfinite(grads)
    mopt_fast.unscale_grads_(params_with(grads), inv, found)
    assert found.item() == float(planted)
    for g, e in zip(grads, expected):
        # inv_scale > 1 can carry fp16 values past 65504: there the exact product rounds to inf
        # (or to the largest finite value), as torch's own unscale gives.
        e = torch.where(e.abs() > torch.finfo(g.dtype).max, e.to(g.dtype).double(), e)
        assert_close_elementwise(g, e)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("where", [0, 4100, 70000 - 3])  # vector body and scalar tail
def test_unscale_sets_found_inf_like_torch(backend, bad, where):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(41)
    grads = [torch.randn(70000, generator=gen).to(torch.float16).to(dev),
             torch.randn(333, generator=gen).to(dev)]
    grads[0][where] = bad
    ours = [g.clone() for g in grads]
    theirs = [g.clone() for g in grads]
    inv = torch.full((1,), 0.125, device=dev)
    f_ours, f_theirs = torch.zeros(1, device=dev), torch.zeros(1, device=dev)
    mopt_fast.unscale_grads_(params_with(ours), inv, f_ours)
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, f_theirs, inv)
    assert f_ours.item() == f_theirs.item() == 1.0
    for a, b in zip(ours, theirs):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_found_inf_is_never_cleared(backend):
    dev = device_of(backend)
    g = torch.randn(100, device=dev)
    found = torch.ones(1, device=dev)
    mopt_fast.unscale_grads_(params_with([g]), torch.ones(1, device=dev), found)
    assert found.item() == 1.0
