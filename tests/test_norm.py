"""get_total_norm / the `norm` op on every backend against a float64 reference."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast
from mopt_fast.registry import kernel

from helpers import (
    build,
    device_of,
    grad_lists,
    isclose,
    random_tensor,
    ref_norm,
    result_dtype,
    skip_unless_available,
)

NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]


def rtol_for(tensors, p):
    # all-fp64 lists are summed in fp64 lanes; anything else in fp32 lanes folded into fp64.
    # General p goes through pow(), whose rounding is amplified by 1/p.
    if all(t.dtype == torch.float64 for t in tensors):
        return 1e-10
    return 2e-5 if p in (1.0, 2.0, math.inf) else 1e-4


@given(case=grad_lists(), p=st.sampled_from(NORM_TYPES))
def test_total_norm_matches_float64(backend, case, p):
    tensors = build(*case, device=device_of(backend))
    before = [t.clone() for t in tensors]
    total = mopt_fast.get_total_norm(tensors, p)
    assert total.dtype == result_dtype(tensors)
    assert total.shape == ()
    assert isclose(total.item(), ref_norm(tensors, p), rtol_for(tensors, p))
    for t, b in zip(tensors, before):  # read-only
        assert torch.equal(t, b)


@given(case=grad_lists(max_tensors=8), p=st.sampled_from(NORM_TYPES))
def test_per_tensor_norms(backend, case, p):
    tensors = build(*case, device=device_of(backend))
    total, per = kernel("norm", tensors[0].device)(tensors, p, True)
    assert per.shape == (len(tensors),) and per.dtype == result_dtype(tensors)
    for t, n in zip(tensors, per.tolist()):
        assert isclose(n, ref_norm([t], p), rtol_for([t], p))
    _, none = kernel("norm", tensors[0].device)(tensors, p, False)
    assert none.numel() == 0


def test_single_tensor_and_generator(backend):
    gen = torch.Generator().manual_seed(1)
    t = random_tensor(gen, 1000, torch.float32, device=device_of(backend))
    assert isclose(mopt_fast.get_total_norm(t).item(), ref_norm([t], 2.0), 1e-5)
    assert isclose(mopt_fast.get_total_norm(x for x in [t, t]).item(), ref_norm([t, t], 2.0), 1e-5)


def test_empty_list_is_zero(backend):
    total = mopt_fast.get_total_norm([])
    assert total.item() == 0.0 and total.dtype == torch.float32


@pytest.mark.parametrize("p", NORM_TYPES)
def test_zero_size_tensors(backend, p):
    dev = device_of(backend)
    empties = [torch.empty(0, device=dev), torch.empty(3, 0, dtype=torch.float16, device=dev)]
    assert mopt_fast.get_total_norm(empties, p).item() == 0.0  # torch raises for the inf norm
    gen = torch.Generator().manual_seed(2)
    t = random_tensor(gen, 257, torch.float32, device=dev)
    assert isclose(mopt_fast.get_total_norm(empties + [t], p).item(), ref_norm([t], p), 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_norm_above_fp16_max_is_finite(backend, dtype):
    # Per-tensor fp16 norms overflow in torch; accumulating in fp32 gives the right finite value.
    gen = torch.Generator().manual_seed(3)
    t = (60000.0 + 1000.0 * torch.rand(4096, generator=gen)).to(dtype).to(device_of(backend))
    total = mopt_fast.get_total_norm([t, t])
    assert total.dtype == torch.float32
    assert math.isfinite(total.item()) and total.item() > 65504
    assert isclose(total.item(), ref_norm([t, t], 2.0), 1e-5)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_huge_finite_fp32_values_do_not_overflow(backend, p):
    if backend == "torch":
        pytest.skip("the torch backend accumulates in fp32 like torch, so |x| > 1e19 overflows")
    gen = torch.Generator().manual_seed(4)
    t = random_tensor(gen, 10000, torch.float32, scale=1e25, device=device_of(backend))
    assert isclose(mopt_fast.get_total_norm(t, p).item(), ref_norm([t], p), 1e-5)


@pytest.mark.parametrize("p", NORM_TYPES)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_nonfinite_values(backend, p, bad):
    gen = torch.Generator().manual_seed(5)
    dev = device_of(backend)
    tensors = [random_tensor(gen, 5000, torch.float32, device=dev),
               random_tensor(gen, 70000, torch.bfloat16, device=dev)]
    tensors[1][12345] = bad
    total = mopt_fast.get_total_norm(tensors, p).item()
    if math.isnan(bad):
        assert math.isnan(total)
    else:
        assert total == math.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        mopt_fast.get_total_norm(tensors, p, error_if_nonfinite=True)


def test_more_accurate_than_fp32_summation():
    skip_unless_available("cpu")
    gen = torch.Generator().manual_seed(6)
    t = torch.rand(1 << 20, generator=gen) + 0.5  # all same sign: worst case for naive fp32 sums
    with mopt_fast.use_backend("cpu"):
        ours = mopt_fast.get_total_norm(t).item()
    exact = ref_norm([t], 2.0)
    assert abs(ours - exact) / exact < 2e-7  # one fp32 rounding of the result


@pytest.mark.parametrize("p", NORM_TYPES)
def test_bitwise_deterministic_across_thread_counts(p):
    skip_unless_available("cpu")
    gen = torch.Generator().manual_seed(7)
    tensors = [random_tensor(gen, n, dt) for n, dt in
               [(3_000_000, torch.float32), (777, torch.float16), (200_000, torch.bfloat16)]]
    tensors += [random_tensor(gen, 4096, torch.float32) for _ in range(300)]
    old = torch.get_num_threads()
    results = []
    try:
        with mopt_fast.use_backend("cpu"):
            for threads in (1, 2, 3, 4):
                torch.set_num_threads(threads)
                total, per = kernel("norm", torch.device("cpu"))(tensors, p, True)
                results.append((total.clone(), per.clone()))
    finally:
        torch.set_num_threads(old)
    for total, per in results[1:]:
        assert torch.equal(total, results[0][0]) and torch.equal(per, results[0][1])


def test_fp64_input_gives_fp64_norm(backend):
    gen = torch.Generator().manual_seed(8)
    dev = device_of(backend)
    t = [random_tensor(gen, 100, torch.float64, device=dev), random_tensor(gen, 100, torch.float16, device=dev)]
    assert mopt_fast.get_total_norm(t).dtype == torch.float64
    assert mopt_fast.get_total_norm(t[1:]).dtype == torch.float32
