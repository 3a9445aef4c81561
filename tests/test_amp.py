"""mopt_fast.amp.GradScaler against torch.amp.GradScaler: the same training run, step for step,
with inf/NaN steps that must be skipped and back the scale off."""
import math

import pytest
import torch

import mopt_fast
from mopt_fast.amp import GradScaler

MAX_NORM = 0.5
BAD_STEPS = {3, 7}  # steps whose gradients get an inf or NaN


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))


def make_optimizer(kind, params):
    if kind == "adam_fused":
        return torch.optim.Adam(params, lr=1e-2, fused=True)
    if kind == "adamw_foreach":
        return torch.optim.AdamW(params, lr=1e-2, foreach=True)
    return torch.optim.SGD(params, lr=1e-1, momentum=0.9)


def run(kind, scaler_cls, fused_clip, steps=10):
    model = make_model(0)
    opt = make_optimizer(kind, model.parameters())
    scaler = scaler_cls("cpu", init_scale=2.0**10, growth_interval=3)
    gen = torch.Generator().manual_seed(1)
    norms, scales = [], []
    for step in range(steps):
        x = torch.randn(32, 16, generator=gen)
        loss = model(x).pow(2).mean() * 100
        opt.zero_grad()
        scaler.scale(loss).backward()
        if step in BAD_STEPS:
            model[0].weight.grad[0, 0] = math.inf if step == 3 else math.nan
        if fused_clip:
            norm = scaler.unscale_clip_grad_norm_(opt, MAX_NORM)
        else:
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        norms.append(norm.item())
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, norms, scales, scaler


@pytest.mark.parametrize("kind", ["adam_fused", "adamw_foreach", "sgd"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_unscale_clip_matches_torch_scaler(kind, backend):
    if backend not in mopt_fast.available_backends():
        pytest.skip(f"backend {backend} not available")
    ref_model, ref_norms, ref_scales, ref_scaler = run(kind, torch.amp.GradScaler, fused_clip=False)
    with mopt_fast.use_backend(backend):
        model, norms, scales, scaler = run(kind, GradScaler, fused_clip=True)
    assert scales == ref_scales  # same skips, same backoff and growth
    assert scaler.state_dict() == ref_scaler.state_dict()
    for step, (a, b) in enumerate(zip(norms, ref_norms)):
        if step in BAD_STEPS:
            assert not math.isfinite(a) and not math.isfinite(b)
        else:
            assert math.isclose(a, b, rel_tol=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["adam_fused", "sgd"])
def test_plain_unscale_matches_torch_scaler(kind):
    ref_model, _, ref_scales, _ = run(kind, torch.amp.GradScaler, fused_clip=False)
    model, _, scales, _ = run(kind, GradScaler, fused_clip=False)
    assert scales == ref_scales
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_optimizer_gradients_are_not_rewritten():
    model = make_model(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = GradScaler("cpu", init_scale=256.0)
    scaler.scale(model(torch.randn(8, 16)).sum()).backward()
    before = [p.grad.clone() for p in model.parameters()]
    scaler.unscale_clip_grad_norm_(opt, 1e-3)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.grad, b)  # the clip coefficient goes to the optimizer's grad_scale


def test_second_unscale_is_an_error():
    model = make_model(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = GradScaler("cpu")
    scaler.scale(model(torch.randn(8, 16)).sum()).backward()
    scaler.unscale_clip_grad_norm_(opt, 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_clip_grad_norm_(opt, 1.0)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)


def test_disabled_scaler_clips_plainly():
    model = make_model(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = GradScaler("cpu", enabled=False)
    model(torch.randn(8, 16)).pow(2).sum().backward()
    norm = scaler.unscale_clip_grad_norm_(opt, 1e-3)
    assert norm.item() > 1e-3
    assert math.isclose(mopt_fast.get_total_norm([p.grad for p in model.parameters()]).item(), 1e-3, rel_tol=1e-3)
