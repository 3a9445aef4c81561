"""clip_grad_value_ (the `clamp_inplace` op): one pass, torch's results."""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast

from helpers import assert_close_elementwise, build, device_of, grad_lists, params_with


@given(case=grad_lists(nonfinite=True), clip=st.floats(0.0, 100.0))
def test_clip_grad_value_matches_float64(backend, case, clip):
    grads = build(*case, device=device_of(backend))
    expected = []
    for g in grads:
        # The limit is used in the compute type (fp64 for fp64, else fp32), and results round to
        # the gradient's dtype.
        opmath = torch.float64 if g.dtype == torch.float64 else torch.float32
        limit = torch.tensor(clip, dtype=opmath).to(g.dtype).double()
        expected.append(g.double().clamp(-limit, limit))
    mopt_fast.clip_grad_value_(params_with(grads), clip)
    for g, e in zip(grads, expected):
        assert_close_elementwise(g, e)


def test_equals_torch_bitwise_with_nan_and_inf(backend):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(21)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        g = (torch.randn(1037, generator=gen) * 3).to(dtype).to(dev)
        g[5], g[6], g[1030] = math.nan, math.inf, -math.inf  # 1030: in the scalar tail
        ours, theirs = g.clone(), g.clone()
        mopt_fast.clip_grad_value_(params_with([ours]), 0.7)
        torch.nn.utils.clip_grad_value_(params_with([theirs]), 0.7)
        assert torch.equal(ours.isnan(), theirs.isnan())
        assert torch.equal(torch.nan_to_num(ours), torch.nan_to_num(theirs))
