"""torch.library.opcheck for every compiled op: schema (declared mutation only), fake kernels,
and AOT dispatch with dynamic shapes (what torch.compile relies on)."""
import pytest
import torch

from helpers import skip_unless_available

from mopt_fast.registry import OPS


def grads(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1000, generator=gen), torch.randn(70, 3, generator=gen).half(),
            torch.randn(5, generator=gen).to(torch.bfloat16)]


def amp():
    return torch.full((1,), 0.25), torch.zeros(1)


CASES = {
    "norm": [lambda: (grads(1), 2.0, True), lambda: (grads(2), float("inf"), False), lambda: (grads(3), 1.5, True)],
    "unscale_norm": [lambda: (grads(4), *amp(), 2.0, True)],
    "scale_inplace": [
        lambda: (grads(5), torch.tensor(0.5), None, 0.0, None),
        lambda: (grads(6), torch.full((1,), 0.5), torch.tensor(100.0), 1.0, torch.zeros(1)),
        lambda: (grads(7), None, torch.tensor(100.0), 1.0, None),
    ],
    "clamp_inplace": [lambda: (grads(8), 0.3)],
    "zero_inplace": [lambda: (grads(9),)],
    "unscale_inplace": [lambda: (grads(10), torch.zeros(1), torch.full((1,), 0.25))],
}


def test_every_op_has_cases():
    assert set(CASES) == set(OPS)


@pytest.mark.parametrize("op,case", [(op, i) for op, cases in CASES.items() for i in range(len(cases))])
def test_opcheck(op, case):
    skip_unless_available("cpu")
    torch.library.opcheck(getattr(torch.ops.mopt_fast, op).default, CASES[op][case]())
