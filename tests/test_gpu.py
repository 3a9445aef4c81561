"""What only a GPU can show, for the "cuda" and "triton" backends: no host sync on the hot path,
CUDA-graph capture, tensors past 2^31 elements, non-default streams, and every element written.
The float64 reference tests of each op run for these backends too when a GPU is present."""
import math
from types import SimpleNamespace

import pytest
import torch

import mopt_fast

from helpers import ref_norm, skip_unless_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cuda", "triton"])
def gpu_backend(request):
    skip_unless_available(request.param)
    with mopt_fast.use_backend(request.param):
        yield request.param


def make_params(seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shapes = [((768, 2304), torch.float32), ((3000,), torch.bfloat16), ((513, 7), torch.float16),
              ((100,), torch.float64), ((0,), torch.float32), ((70000,), torch.float32)]
    params = []
    for shape, dtype in shapes:
        p = torch.nn.Parameter(torch.empty(shape, device="cuda", dtype=dtype))
        p.grad = (torch.randn(shape, device="cuda", generator=gen) * 1000).to(dtype)
        params.append(p)
    t = torch.randn(64, 96, device="cuda", generator=gen).t()  # dense, not contiguous
    p = torch.nn.Parameter(torch.empty(96, 64, device="cuda"))
    p.grad = t
    params.append(p)
    return params


def amp_step(params, inv, found):
    total = mopt_fast.unscale_clip_grad_norm_(params, 1.0, inv, found)
    mopt_fast.clip_grad_value_(params, 0.01)
    mopt_fast.scale_grads_(params, 0.5)
    return total


def test_no_host_sync_in_amp_pipeline(gpu_backend):
    params = make_params(1)
    inv = torch.full((1,), 1 / 1024, device="cuda")
    found = torch.zeros(1, device="cuda")
    amp_step(params, inv, found)  # warm-up: tables cached, Triton kernels compiled
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            amp_step(params, inv, found)
            mopt_fast.get_total_norm([p.grad for p in params])
            mopt_fast.zero_grad_(params, set_to_none=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_replay_equals_eager(gpu_backend):
    static = make_params(2)
    eager = make_params(2)
    inv = torch.full((1,), 1 / 256, device="cuda")
    found_static, found_eager = torch.zeros(1, device="cuda"), torch.zeros(1, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch's docs advise
        amp_step(static, inv, found_static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        total_static = amp_step(static, inv, found_static)
    for seed in (3, 4):
        fresh = make_params(seed)
        for s, e, f in zip(static, eager, fresh):
            s.grad.copy_(f.grad)
            e.grad.copy_(f.grad)
        found_static.zero_()
        found_eager.zero_()
        graph.replay()
        total_eager = amp_step(eager, inv, found_eager)
        torch.cuda.synchronize()
        assert torch.equal(total_static, total_eager)
        for s, e in zip(static, eager):
            assert torch.equal(s.grad, e.grad)


def test_non_default_stream(gpu_backend):
    params = make_params(5)
    expected = ref_norm([p.grad for p in params], 2.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        total = mopt_fast.clip_grad_norm_(params, 1.0)
        after = mopt_fast.get_total_norm([p.grad for p in params])
    torch.cuda.current_stream().wait_stream(stream)
    assert math.isclose(total.item(), expected, rel_tol=1e-5)
    assert math.isclose(after.item(), 1.0, rel_tol=1e-4)


@pytest.mark.parametrize("offset", [0, 1])  # 1: a view that is not 16-byte aligned
def test_every_element_written(gpu_backend, offset):
    n = 3 * 65536 + 1234
    base = torch.full((n + offset,), math.nan, device="cuda")
    poisoned = base[offset:]
    mopt_fast.zero_grad_([SimpleNamespace(grad=poisoned)], set_to_none=False)
    assert (poisoned == 0).all() and not torch.signbit(poisoned).any()
    poisoned.fill_(1e30)
    mopt_fast.clip_grad_value_([SimpleNamespace(grad=poisoned)], 2.0)
    assert (poisoned == 2.0).all()
    poisoned.fill_(3.0)
    mopt_fast.scale_grads_([SimpleNamespace(grad=poisoned)], 0.5)
    assert (poisoned == 1.5).all()
    found = torch.zeros(1, device="cuda")
    mopt_fast.unscale_grads_([SimpleNamespace(grad=poisoned)], torch.full((1,), 2.0, device="cuda"), found)
    assert (poisoned == 3.0).all() and found.item() == 0.0
    total, per = mopt_fast.registry.kernel("norm", poisoned.device)([poisoned, poisoned[:5]], 1.0, True)
    assert per.tolist() == [3.0 * n, 15.0] and total.item() == 3.0 * (n + 5)


@pytest.mark.slow
def test_bf16_over_2_pow_31_elements(gpu_backend):
    n = 2**31 + 4099
    t = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    idx = torch.tensor([2**31 + 5, n - 1], device="cuda")
    t[idx] = torch.tensor([4.0, 8.0], dtype=torch.bfloat16, device="cuda")
    expected = math.sqrt((n - 2) + 16.0 + 64.0)
    assert math.isclose(mopt_fast.get_total_norm(t).item(), expected, rel_tol=1e-6)
    mopt_fast.scale_grads_([SimpleNamespace(grad=t)], 0.5)
    assert t[idx].tolist() == [2.0, 4.0] and t[2**31].item() == 0.5 and t[0].item() == 0.5
