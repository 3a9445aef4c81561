"""torch.compile sees the custom ops (fake kernels + functionalization of the in-place ones)."""
import torch

import mopt_fast

from helpers import skip_unless_available


def make_grads(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4096, generator=gen) * 100, torch.randn(33, 7, generator=gen).half() * 100]


def amp_clip_step(grads, inv_scale, found_inf):
    total, _ = torch.ops.mopt_fast.unscale_norm(grads, inv_scale, found_inf, 2.0, False)
    torch.ops.mopt_fast.scale_inplace(grads, inv_scale, total, 1.0, found_inf)
    torch.ops.mopt_fast.clamp_inplace(grads, 0.01)
    return total


def test_compiled_graph_equals_eager():
    skip_unless_available("cpu")
    torch._dynamo.reset()
    eager_grads, compiled_grads = make_grads(1), make_grads(1)
    inv = torch.full((1,), 0.5)
    f_eager, f_compiled = torch.zeros(1), torch.zeros(1)
    expected = amp_clip_step(eager_grads, inv, f_eager)
    step = torch.compile(amp_clip_step, fullgraph=True, dynamic=False)
    got = step(compiled_grads, inv, f_compiled)
    torch.testing.assert_close(got, expected)
    for a, b in zip(compiled_grads, eager_grads):
        assert torch.equal(a, b)
    assert f_compiled.item() == f_eager.item() == 0.0


def test_functional_api_under_compile():
    skip_unless_available("cpu")
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    model(torch.randn(8, 16)).pow(2).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]

    def clip(params):
        return mopt_fast.clip_grad_norm_(params, 0.5)

    total = torch.compile(clip)(list(model.parameters()))
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in ref]))
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
    coef = min(1.0, 0.5 / (expected.item() + 1e-6))
    for p, g in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, g * coef, rtol=1e-5, atol=1e-7)
