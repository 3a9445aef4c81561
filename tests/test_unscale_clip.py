"""The unscale_clip_inplace op: the AMP clip in one call. It must give, bit for bit, what its two
passes give as separate ops (unscale_norm, then scale_inplace), on every backend: float64
references for those are in test_unscale_norm.py and test_scale.py."""
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from mopt_fast.registry import kernel

from helpers import build, device_of, grad_lists


@given(case=grad_lists(nonfinite=True), log2_scale=st.integers(-2, 16), max_norm=st.floats(0.0, 1e3),
       p=st.sampled_from([2.0, 1.0, math.inf, 3.0]), preset=st.booleans())
def test_one_call_equals_its_two_passes(backend, case, log2_scale, max_norm, p, preset):
    dev = device_of(backend)
    ours = build(*case, device=dev)
    theirs = [g.clone() for g in ours]
    inv = torch.full((1,), 2.0**-log2_scale, device=dev)
    found_ours = torch.full((1,), float(preset), device=dev)  # a found_inf set before: no write
    found_theirs = found_ours.clone()
    device = ours[0].device
    total = kernel("unscale_clip_inplace", device)(ours, inv, found_ours, max_norm, p)
    ref_total, _ = kernel("unscale_norm", device)(theirs, inv, found_theirs, p, False)
    kernel("scale_inplace", device)(theirs, inv, ref_total, max_norm, found_theirs)
    assert torch.equal(total, ref_total) or (total.isnan() and ref_total.isnan())
    assert total.shape == () and not total.requires_grad
    assert torch.equal(found_ours, found_theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_listed_twice_reads_both_listings_then_writes_each_once_per_listing(backend):
    """The norm covers both listings (as torch's norm of [g, g]); the scaling is applied once per
    listing, one after the other (as torch's foreach scaling of [g, g])."""
    dev = device_of(backend)
    g = torch.tensor([3.0, 4.0], device=dev)
    inv = torch.full((1,), 0.5, device=dev)
    found = torch.zeros(1, device=dev)
    device = g.device
    total = kernel("unscale_clip_inplace", device)([g, g], inv, found, 1.0, 2.0)
    norm = math.sqrt(2) * 2.5  # of the unscaled values [1.5, 2], listed twice
    assert math.isclose(total.item(), norm, rel_tol=1e-6)
    factor = 0.5 * (1.0 / (norm + 1e-6))
    torch.testing.assert_close(g, torch.tensor([3.0, 4.0], device=dev) * factor**2, rtol=1e-6, atol=0)
