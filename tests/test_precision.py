"""mopt_fast's own 16-mixed plugin (mopt_fast.precision.MixedPrecision), driven directly on the
CPU, against torch's GradScaler recipe in the cases an iteration does not step every optimizer
once: a clip without a step (the next iteration must clip freshly scaled gradients, not treat
them as unscaled), and an optimizer stepped twice in one iteration."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mopt_fast
from mopt_fast.precision import MixedPrecision

INIT_SCALE = 2.0**10
# Above the true gradients' norm, below the scaled ones': clipping gradients left scaled by mistake
# changes the result (a clip that acts either way would hide it: it rescales to the same norm).
MAX_NORM = 5.0


def regression(seed: int) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    data = [(torch.randn(8, 6), torch.randn(8, 1)) for _ in range(6)]
    return model, data


@pytest.mark.parametrize("clip_when_stepping", [True, False])
@pytest.mark.parametrize("fused", [False, True])
def test_clip_without_step_then_step_matches_torch(fused: bool, clip_when_stepping: bool) -> None:
    """Even iterations clip and do not step; odd ones step, with or without a clip (a fused
    optimizer's folded clip factor must not leak into a later step that does not clip)."""
    a, data = regression(0)
    b = copy.deepcopy(a)
    # SGD: unlike Adam, its step is not blind to a gradient left scaled by mistake.
    opt_a = torch.optim.SGD(a.parameters(), lr=1e-2, momentum=0.9, fused=fused or None)
    opt_b = torch.optim.SGD(b.parameters(), lr=1e-2, momentum=0.9, fused=fused or None)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    plugin = MixedPrecision("16-mixed", "cpu", mopt_fast.amp.GradScaler("cpu", init_scale=INIT_SCALE))
    for i, (x, y) in enumerate(data):
        step = i % 2 == 1
        opt_a.zero_grad()
        scaler.scale(nn.functional.mse_loss(a(x), y)).backward()
        clip = not step or clip_when_stepping
        if clip:
            scaler.unscale_(opt_a)
            torch.nn.utils.clip_grad_norm_(a.parameters(), MAX_NORM)
        if step:
            scaler.step(opt_a)
        scaler.update()

        opt_b.zero_grad()
        plugin.scale_loss(nn.functional.mse_loss(b(x), y)).backward()
        if clip:
            plugin.clip_gradients(opt_b, MAX_NORM, "norm")
        if step:
            plugin.optimizer_step(opt_b, None)
        plugin.end_iteration()
    assert plugin.scaler.get_scale() == scaler.get_scale()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=2e-5, atol=2e-6)


def test_one_optimizer_stepped_twice_in_one_iteration() -> None:
    """Both steps use the scale their gradients carry (torch's GradScaler refuses a second step
    before update()); one update follows the iteration. With no inf the scale cancels out, so the
    reference is the same two steps without scaling."""
    a, data = regression(1)
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=1e-2)
    opt_b = torch.optim.SGD(b.parameters(), lr=1e-2)
    plugin = MixedPrecision("16-mixed", "cpu", mopt_fast.amp.GradScaler("cpu", init_scale=INIT_SCALE))
    for x, y in data:
        for rows in (slice(0, 4), slice(4, 8)):
            opt_a.zero_grad()
            nn.functional.mse_loss(a(x[rows]), y[rows]).backward()  # the scale cancels: plain steps
            opt_a.step()
            opt_b.zero_grad()
            plugin.scale_loss(nn.functional.mse_loss(b(x[rows]), y[rows])).backward()
            plugin.optimizer_step(opt_b, None)
        plugin.end_iteration()
    assert plugin.scaler.get_scale() == INIT_SCALE  # no inf: the scale only grows after 2000 steps
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-7)
