"""A tensor past 2^31 elements: int64 sizes and offsets all the way (torch and Apex's 32-bit
multi-tensor indexing breaks there). 4.3 GB of bf16."""
import math
from types import SimpleNamespace

import pytest
import torch

import mopt_fast
from mopt_fast.registry import kernel

from helpers import skip_unless_available

N = 2**31 + 4099  # past int32 and not a multiple of the chunk or the vector width


@pytest.mark.slow
def test_bf16_tensor_over_2_pow_31_elements():
    skip_unless_available("cpu")
    gen = torch.Generator().manual_seed(71)
    t = torch.empty(N, dtype=torch.bfloat16)
    t.fill_(1.0)
    # Random values at random places past 2^31, and the very last element.
    idx = torch.randint(2**31, N, (64,), generator=gen).unique()
    idx = torch.cat([idx, torch.tensor([N - 1])]).unique()
    vals = (torch.rand(idx.numel(), generator=gen) * 8 + 2).to(torch.bfloat16)
    t[idx] = vals
    v = vals.double()
    expected_sq = (N - idx.numel()) + (v * v).sum().item()
    with mopt_fast.use_backend("cpu"):
        total, _ = kernel("norm", t.device)([t], 2.0, True)
        assert math.isclose(total.item(), math.sqrt(expected_sq), rel_tol=1e-6)
        assert math.isclose(mopt_fast.get_total_norm(t, math.inf).item(), v.max().item())
        mopt_fast.scale_grads_([SimpleNamespace(grad=t)], 0.5)
    assert torch.equal(t[idx].double(), v * 0.5)
    ones = torch.tensor([0, 2**31 - 1, 2**31, 2**31 + 1, N - 2])
    ones = ones[~torch.isin(ones, idx)]
    assert torch.equal(t[ones], torch.full((ones.numel(),), 0.5, dtype=torch.bfloat16))
