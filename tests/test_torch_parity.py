"""Calls torch accepts, and the results it gives, side by side with torch's own functions (issue
11 §2-3): 0-d tensor limits, fp16/bf16 norms, overlapping tensors that are only read, limits past
a dtype's range, a tensor listed twice (deterministic, as torch), and calls that must fail before
they write anything (a forced backend that cannot run one of the devices, a bad tensor after a
sparse one)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mopt_fast

from helpers import device_of
from helpers import params_with as params


def assert_same(got: torch.Tensor, want: torch.Tensor, backend: str) -> None:
    """Bitwise equal. One exception: Triton's interpreter (how CI runs the Triton kernels) rounds
    fp32 -> bf16 toward zero rather than to nearest (and flushes some subnormals), so there bf16
    results may sit one ulp apart;
    on a GPU the conversion rounds to nearest and this is bitwise too."""
    if backend == "triton" and got.dtype == torch.bfloat16 and not got.is_cuda:
        top = torch.finfo(torch.bfloat16).max  # one ulp below inf
        torch.testing.assert_close(got.float().clamp(-top, top), want.float().clamp(-top, top),
                                   rtol=2.0**-7, atol=torch.finfo(torch.bfloat16).tiny, equal_nan=True)
        return
    assert torch.equal(got.isnan(), want.isnan()), backend
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), (backend, got.dtype, (got - want).abs().max())


def twin_grads(dev, seed, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64)):
    gen = torch.Generator().manual_seed(seed)
    grads = [(torch.randn(257, generator=gen) * 3).to(dt).to(dev) for dt in dtypes]
    return grads, [g.clone() for g in grads]


@pytest.mark.parametrize("limit", [torch.tensor(0.5), torch.tensor([0.5]), torch.tensor(0.5, dtype=torch.float64)])
def test_tensor_limits_taken_as_float_like_torch(backend, limit):
    dev = device_of(backend)
    ours, theirs = twin_grads(dev, 1, (torch.float32, torch.float64))
    n_ours = mopt_fast.clip_grad_norm_(params(ours), limit)
    n_theirs = torch.nn.utils.clip_grad_norm_(params(theirs), limit)
    torch.testing.assert_close(n_ours, n_theirs, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=0)
    ours, theirs = twin_grads(dev, 2)
    mopt_fast.clip_grad_value_(params(ours), limit)
    torch.nn.utils.clip_grad_value_(params(theirs), limit)
    for a, b in zip(ours, theirs):
        assert_same(a, b, backend)


@pytest.mark.parametrize("bad", [torch.tensor(-1.0), torch.tensor(float("nan"))])
def test_tensor_limits_keep_the_sign_and_nan_checks(backend, bad):
    dev = device_of(backend)
    grads, before = twin_grads(dev, 3)
    with pytest.raises(ValueError, match="max_norm must be a non-negative number"):
        mopt_fast.clip_grad_norm_(params(grads), bad)
    with pytest.raises(ValueError, match="clip_value must be a non-negative number"):
        mopt_fast.clip_grad_value_(params(grads), bad)
    assert all(torch.equal(a, b) for a, b in zip(grads, before))


@pytest.mark.parametrize("norm_dtype", [torch.float16, torch.bfloat16])
@given(seed=st.integers(0, 2**31 - 1), norm=st.floats(0.01, 60000.0), max_norm=st.floats(0.0, 100.0))
def test_clip_grads_with_low_precision_norm_is_bitwise_torch(backend, norm_dtype, seed, norm, max_norm):
    dev = device_of(backend)
    ours, theirs = twin_grads(dev, seed)
    total = torch.tensor(norm, dtype=norm_dtype, device=dev)
    mopt_fast.clip_grads_with_norm_(params(ours), max_norm, total)
    torch.nn.utils.clip_grads_with_norm_(params(theirs), max_norm, total)
    for a, b in zip(ours, theirs):
        assert_same(a, b, backend)


def test_norm_of_tensors_with_internal_overlap_like_torch(backend):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(1, 64, generator=gen).to(dev)
    tensors = [base.expand(16, 64), torch.randn(3, generator=gen).to(dev).expand(4, 3).t(), torch.randn(5).to(dev)]
    for p in (2.0, 1.0, float("inf"), 3.0):
        got = mopt_fast.get_total_norm(tensors, p)
        want = torch.nn.utils.get_total_norm([t.double() for t in tensors], p)
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)


@pytest.mark.parametrize("limit", [1e30, 1e300, 65510.0, 65530.0, 3.4e38])
def test_clip_value_past_a_dtype_range_agrees_on_every_backend(limit):
    """torch's foreach clamp refuses 1e30 for an fp16 list; every mopt_fast backend accepts it
    and gives the compiled kernels' result: the clamp in the compute type, rounded to the dtype."""
    gen = torch.Generator().manual_seed(5)
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e35, -3e38, 65504.0, 2.0])
    base = [torch.cat([specials, torch.randn(100, generator=gen) * 1e4]) for _ in range(4)]
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    results = {}
    for backend in mopt_fast.available_backends():
        if device_of(backend) != "cpu":
            continue
        grads = [b.to(dt) for b, dt in zip(base, dtypes)]
        with mopt_fast.use_backend(backend):
            mopt_fast.clip_grad_value_(params(grads), limit)
        results[backend] = grads
    for dt, b in zip(dtypes, base):
        compute = torch.float64 if dt == torch.float64 else torch.float32
        v = limit if limit <= torch.finfo(compute).max else float("inf")
        want = b.to(dt).to(compute).clamp(-v, v).to(dt)
        for backend, grads in results.items():
            assert_same(grads[dtypes.index(dt)], want, backend)


# (our call, torch's call) on a list that names the same gradient twice.
TWICE = {
    "scale_grads_": (lambda ps: mopt_fast.scale_grads_(ps, 0.5), lambda ps: torch._foreach_mul_([p.grad for p in ps], 0.5)),
    "clip_grad_norm_": (lambda ps: mopt_fast.clip_grad_norm_(ps, 0.3), lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.3)),
    "clip_grads_with_norm_": (lambda ps: mopt_fast.clip_grads_with_norm_(ps, 0.3, torch.tensor(7.0)),
                              lambda ps: torch.nn.utils.clip_grads_with_norm_(ps, 0.3, torch.tensor(7.0))),
    "clip_grad_value_": (lambda ps: mopt_fast.clip_grad_value_(ps, 0.3), lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.3)),
    "zero_grad_": (lambda ps: mopt_fast.zero_grad_(ps, set_to_none=False), lambda ps: torch._foreach_zero_([p.grad for p in ps])),
    "unscale_grads_": (
        lambda ps: mopt_fast.unscale_grads_(ps, torch.full((1,), 0.5), torch.zeros(1)),
        lambda ps: torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in ps], torch.zeros(1), torch.full((1,), 0.5))),
}


@pytest.mark.parametrize("call", sorted(TWICE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_tensor_listed_twice_gives_torchs_result_every_time(backend, call, dtype):
    """It raced on the CPU kernels (0.25 or a mix of 0.25 and 0.5 from run to run). Large enough
    for many work items per tensor, repeated, and views that overlap without being equal."""
    dev = device_of(backend)
    if dev != "cpu":
        pytest.skip("torch's CPU foreach is the sequential reference")
    ours_call, torch_call = TWICE[call]

    def same(got, want):
        if call.startswith("clip_grad") and "norm" in call:
            # The clip coefficient: ours max_norm / (norm + eps), torch's reciprocal * max_norm, and
            # ours sums the norm in fp64 while torch's fp32 norm of a strided tensor is ~6e-6 off;
            # applied twice.
            rtol, atol = {torch.float32: (3e-5, 1e-30), torch.float16: (2e-3, 1.2e-7),
                          torch.bfloat16: (2e-2, 1e-30)}[dtype]
            torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)
        else:
            assert_same(got, want, backend)

    gen = torch.Generator().manual_seed(6)
    numel = 3 * 65536 + 17  # several chunks, so several threads would write the same bytes
    for _ in range(5):
        g = (torch.randn(numel, generator=gen) * 4).to(dtype)
        other = torch.randn(100, generator=gen).to(dtype)
        ours, theirs = g.clone(), g.clone()
        ours_other, theirs_other = other.clone(), other.clone()
        p_ours, q_ours = params([ours, ours_other])
        p_theirs, q_theirs = params([theirs, theirs_other])
        ours_call([p_ours, q_ours, p_ours])
        torch_call([p_theirs, q_theirs, p_theirs])
        same(ours, theirs)
        same(ours_other, theirs_other)
        # A non-dense gradient (every other element) listed twice: the kernels work on a copy
        # and write it back, so without rounds each listing would start from the original.
        strided = (torch.randn(2 * numel, generator=gen) * 4).to(dtype)
        ours_s, theirs_s = strided.clone(), strided.clone()
        ours_call(params([ours_s[::2], ours_s[::2]]))
        torch_call(params([theirs_s[::2], theirs_s[::2]]))
        same(ours_s, theirs_s)
        # Overlapping views of one buffer: [0, n) and [n/2, n + n/2) share a half.
        buf = (torch.randn(2 * numel, generator=gen) * 4).to(dtype)
        ours_buf, theirs_buf = buf.clone(), buf.clone()
        half = numel // 2
        views_ours = params([ours_buf[:numel], ours_buf[half:half + numel]])
        views_theirs = params([theirs_buf[:numel], theirs_buf[half:half + numel]])
        ours_call(views_ours)
        torch_call(views_theirs)
        same(ours_buf, theirs_buf)


def test_disjoint_rounds():
    """The Python planner (Triton and torch backends); the C++ one is exercised by the test above."""
    from mopt_fast._validate import disjoint_rounds

    buf = torch.randn(100)
    a, b, c = buf[:50], buf[40:60], buf[60:]
    assert disjoint_rounds([a, c]) is None
    # b overlaps a; the second a overlaps both a (round 0) and b (round 1)
    assert disjoint_rounds([a, b, c, a]) == [[0, 2], [1], [3]]
    assert disjoint_rounds([torch.randn(0), torch.randn(0)]) is None
    t = torch.randn(4, 6)
    assert disjoint_rounds([t[:, ::2], t[:, 1::2]]) == [[0], [1]]  # interleaved: conservatively apart


# Calls that write, each given gradients on the CPU and on the meta device.
MIXED = {
    "scale_grads_": lambda ps: mopt_fast.scale_grads_(ps, 0.5),
    "clip_grad_value_": lambda ps: mopt_fast.clip_grad_value_(ps, 0.1),
    "clip_grads_with_norm_": lambda ps: mopt_fast.clip_grads_with_norm_(ps, 0.1, torch.tensor(10.0)),
    "clip_grad_norm_": lambda ps: mopt_fast.clip_grad_norm_(ps, 0.1),
    "zero_grad_": lambda ps: mopt_fast.zero_grad_(ps, set_to_none=False),
}


@pytest.mark.parametrize("call", sorted(MIXED))
@pytest.mark.parametrize("forced", ["cpu", "triton"])
def test_forced_backend_refuses_a_device_it_cannot_run_before_writing(call, forced):
    from mopt_fast.registry import unavailable_reason

    if unavailable_reason(forced) is not None:
        pytest.skip(f"backend {forced!r} is not available here")
    a = torch.randn(1000) + 3
    before = a.clone()
    meta = torch.zeros(10, device="meta")
    with mopt_fast.use_backend(forced), pytest.raises(RuntimeError, match=f"backend '{forced}' runs .* not meta"):
        MIXED[call](params([a, meta]))
    assert torch.equal(a, before)


@pytest.mark.parametrize("call", sorted(set(MIXED) - {"clip_grad_norm_"}))  # a meta norm has no value
def test_default_backends_run_a_device_mix(call):
    a = torch.randn(1000) + 3
    MIXED[call](params([a, torch.zeros(10, device="meta")]))
    assert not torch.equal(a, torch.randn(1000) + 3)


@pytest.mark.parametrize("bad", ["int64", "expanded"])
def test_zero_grad_refuses_a_bad_dense_gradient_before_touching_a_sparse_one(backend, bad):
    dev = device_of(backend)
    sparse = torch.randn(20, device=dev).relu().to_sparse()
    sparse_before = sparse.clone()
    dense = torch.randn(30, device=dev)
    dense_before = dense.clone()
    wrong = torch.arange(5, device=dev) if bad == "int64" else torch.randn(1, device=dev).expand(5)
    holders = [type("Holder", (), {"grad": t})() for t in (sparse, dense, wrong)]
    with pytest.raises((TypeError, ValueError), match="dtype|share memory"):
        mopt_fast.zero_grad_(holders, set_to_none=False)
    assert torch.equal(sparse.to_dense(), sparse_before.to_dense())
    assert torch.equal(dense, dense_before)


def test_unscale_accepts_a_found_inf_that_requires_grad_like_torch(backend):
    dev = device_of(backend)
    grads = [torch.tensor([1.0, float("inf"), 4.0], device=dev)]
    ref = [g.clone() for g in grads]
    found = torch.zeros(1, device=dev, requires_grad=True)
    found_ref = torch.zeros(1, device=dev, requires_grad=True)
    mopt_fast.unscale_grads_(params(grads), torch.full((1,), 0.5, device=dev), found)
    with torch.no_grad():
        torch._amp_foreach_non_finite_check_and_unscale_(ref, found_ref, torch.full((1,), 0.5, device=dev))
    assert torch.equal(grads[0], ref[0]) and found.item() == found_ref.item() == 1.0
