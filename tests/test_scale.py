"""scale_grads_, clip_grads_with_norm_ and clip_grad_norm_ (the `scale_inplace` op)."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast
from mopt_fast.registry import kernel

from helpers import assert_close_elementwise, build, device_of, grad_lists, isclose, params_with, ref_norm


@given(case=grad_lists(nonfinite=True), scale=st.floats(-4.0, 4.0).filter(lambda s: abs(s) > 1e-3))
def test_scale_grads_by_number(backend, case, scale):
    grads = build(*case, device=device_of(backend))
    expected = [g.double() * scale for g in grads]
    mopt_fast.scale_grads_(params_with(grads), scale)
    for g, e in zip(grads, expected):
        assert_close_elementwise(g, e)


@given(case=grad_lists())
def test_scale_grads_by_tensor(backend, case):
    grads = build(*case, device=device_of(backend))
    factor = torch.rand(()) + 0.25
    expected = [g.double() * factor.item() for g in grads]
    mopt_fast.scale_grads_(params_with(grads), factor.to(grads[0].device))
    for g, e in zip(grads, expected):
        assert_close_elementwise(g, e)


@given(case=grad_lists(), max_norm=st.floats(1e-3, 1e4), p=st.sampled_from([2.0, 1.0, math.inf]))
def test_clip_grad_norm_matches_float64(backend, case, max_norm, p):
    grads = build(*case, device=device_of(backend))
    norm64 = ref_norm(grads, p)
    coef = min(1.0, max_norm / (norm64 + 1e-6))
    expected = [g.double() * coef for g in grads]
    total = mopt_fast.clip_grad_norm_(params_with(grads), max_norm, p)
    assert isclose(total.item(), norm64, 1e-4)
    for g, e in zip(grads, expected):
        rtol = {torch.float32: 1e-5, torch.float64: 1e-5}.get(g.dtype, None)
        if rtol is None:
            assert_close_elementwise(g, e)
        else:  # the coefficient itself is computed in fp32 from an fp32 norm, as torch does
            torch.testing.assert_close(g.double(), e, rtol=rtol, atol=1e-30)


def test_clip_matches_torch_within_rounding(backend):
    gen = torch.Generator().manual_seed(11)
    dev = device_of(backend)
    grads = [torch.randn(n, generator=gen).to(dev) * 5 for n in (10, 1000, 70000)]
    ours, theirs = params_with([g.clone() for g in grads]), params_with([g.clone() for g in grads])
    n1 = mopt_fast.clip_grad_norm_(ours, 1.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(n1, n2, rtol=2e-6, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-6, atol=1e-12)


def test_clip_below_max_norm_leaves_values_bitwise(backend):
    grads = build(12, [(1000, torch.float16, "contiguous", 1.0, None), (5000, torch.float32, "strided", 1.0, None)],
                  device=device_of(backend))
    before = [g.clone() for g in grads]
    mopt_fast.clip_grad_norm_(params_with(grads), 1e9)
    for g, b in zip(grads, before):
        assert torch.equal(g, b)


def test_clip_grads_with_norm_uses_given_norm(backend):
    gen = torch.Generator().manual_seed(13)
    g = torch.randn(3000, generator=gen).to(device_of(backend))
    expected = g.double() * (2.0 / (10.0 + 1e-6))
    mopt_fast.clip_grads_with_norm_(params_with([g]), 2.0, torch.tensor(10.0, device=g.device))
    torch.testing.assert_close(g.double(), expected, rtol=1e-6, atol=0)


def test_nan_norm_propagates_like_torch(backend):
    g = torch.randn(100).to(device_of(backend))
    g[3] = math.nan
    total = mopt_fast.clip_grad_norm_(params_with([g]), 1.0)
    assert math.isnan(total.item()) and torch.isnan(g).all()


def test_params_without_grad_are_skipped(backend):
    dev = device_of(backend)
    a = torch.nn.Parameter(torch.randn(10, device=dev))
    b = torch.nn.Parameter(torch.randn(10, device=dev))
    a.grad = torch.randn(10, device=dev) * 100
    expected = ref_norm([a.grad], 2.0)
    total = mopt_fast.clip_grad_norm_([a, b], 1.0)
    assert b.grad is None and isclose(total.item(), expected, 1e-5)
    assert isclose(a.grad.double().norm().item(), 1.0, 1e-5)
    assert mopt_fast.clip_grad_norm_([b], 1.0).item() == 0.0


def test_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="empty generator"):
        mopt_fast.clip_grad_norm_((p for p in []), 1.0)


def test_scale_skipped_when_found_inf_set(backend):
    dev = device_of(backend)
    g = torch.randn(5000, device=dev)
    before = g.clone()
    found = torch.ones(1, device=dev)
    kernel("scale_inplace", g.device)([g], torch.full((1,), 0.5, device=dev), None, 0.0, found)
    assert torch.equal(g, before)
    found.zero_()
    kernel("scale_inplace", g.device)([g], torch.full((1,), 0.5, device=dev), None, 0.0, found)
    assert torch.equal(g, before * 0.5)
