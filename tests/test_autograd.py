"""The ops as autograd sees them, side by side with torch's own functions: every write bumps the
version counter of the tensor written (so a graph that saved it refuses to backpropagate through
the new values), inference tensors are refused outside inference mode before anything is written,
and no result requires grad. Checked for every backend, and at the dispatcher for every op of
both registered namespaces (torch.ops.mopt_fast and torch.ops.mopt_fast_triton)."""
from __future__ import annotations

import pytest
import torch

import mopt_fast
from mopt_fast.registry import OPS

from helpers import device_of, skip_unless_available


def amp_pair(dev):
    return torch.full((1,), 0.5, device=dev), torch.zeros(1, device=dev)


# Each mutating functional call, and torch's own function for the same work (None: no torch twin).
WRITERS = {
    "clip_grad_norm_": (lambda ps, dev: mopt_fast.clip_grad_norm_(ps, 0.1),
                        lambda ps, dev: torch.nn.utils.clip_grad_norm_(ps, 0.1)),
    "clip_grads_with_norm_": (
        lambda ps, dev: mopt_fast.clip_grads_with_norm_(ps, 0.1, torch.tensor(50.0, device=dev)),
        lambda ps, dev: torch.nn.utils.clip_grads_with_norm_(ps, 0.1, torch.tensor(50.0, device=dev))),
    "clip_grad_value_": (lambda ps, dev: mopt_fast.clip_grad_value_(ps, 0.1),
                         lambda ps, dev: torch.nn.utils.clip_grad_value_(ps, 0.1)),
    "scale_grads_": (lambda ps, dev: mopt_fast.scale_grads_(ps, 0.5),
                     lambda ps, dev: torch._foreach_mul_([p.grad for p in ps], 0.5)),
    "zero_grad_": (lambda ps, dev: mopt_fast.zero_grad_(ps, set_to_none=False),
                   lambda ps, dev: torch._foreach_zero_([p.grad for p in ps])),
    "unscale_grads_": (lambda ps, dev: mopt_fast.unscale_grads_(ps, *amp_pair(dev)), None),
    "unscale_clip_grad_norm_": (lambda ps, dev: mopt_fast.unscale_clip_grad_norm_(ps, 0.1, *amp_pair(dev)), None),
}


def param_with_grad(grad: torch.Tensor) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device))
    p.grad = grad
    return p


@pytest.mark.parametrize("call", sorted(WRITERS))
def test_write_is_seen_by_autograd_as_in_torch(backend, call):
    """The issue's repro: a graph that saved the gradient must refuse to backpropagate after the
    gradient is written in place. Without the version bump it silently used the new values."""
    dev = device_of(backend)
    ours, theirs = WRITERS[call]
    outcomes = []
    for run in (ours, theirs or ours):
        x = torch.tensor([3.0, 4.0, -12.0], device=dev, requires_grad=True)
        p = param_with_grad(x * 1)
        saved = (p.grad ** 2).sum()  # pow saves p.grad for its backward
        version = p.grad._version
        run([p], dev)
        assert p.grad._version > version, "the write did not bump the version counter"
        # zero_grad_ also detaches the gradient from its graph, as Optimizer.zero_grad does.
        with pytest.raises(RuntimeError, match="modified by an inplace operation|detached in-place"):
            saved.backward()
        outcomes.append(True)
    assert outcomes == [True, True]


@pytest.mark.parametrize("call", sorted(WRITERS))
def test_inference_tensor_refused_outside_inference_mode_and_left_alone(backend, call):
    dev = device_of(backend)
    ours, theirs = WRITERS[call]
    with torch.inference_mode():
        for_torch = torch.randn(100, device=dev) + 5
    plain = torch.randn(100, device=dev) + 5
    with torch.inference_mode():
        inference = torch.randn(100, device=dev) + 5
    before_plain, before_inf = plain.clone(), inference.clone()
    if theirs is not None:  # torch refuses too (it may have written first: that is what we fix)
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
            theirs([param_with_grad(for_torch)], dev)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        ours([param_with_grad(plain), param_with_grad(inference)], dev)
    assert torch.equal(plain, before_plain) and torch.equal(inference, before_inf)


@pytest.mark.parametrize("call", sorted(WRITERS))
def test_inference_tensors_are_updated_inside_inference_mode(backend, call):
    dev = device_of(backend)
    ours, _ = WRITERS[call]
    with torch.inference_mode():
        g = torch.full((10,), 4.0, device=dev)
        ours([param_with_grad(g)], dev)
    assert not torch.equal(g, torch.full((10,), 4.0, device=dev))


def create_graph_grads(dev, seed):
    """Gradients that require grad and have a grad_fn, from backward(create_graph=True)."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(5, 3).to(dev)
    (lin(torch.randn(8, 5, device=dev)) ** 2).sum().backward(create_graph=True)
    params = list(lin.parameters())
    assert all(p.grad.requires_grad for p in params)
    return params


@pytest.mark.parametrize("fn", ["get_total_norm", "clip_grad_norm_", "unscale_clip_grad_norm_"])
def test_results_do_not_require_grad_as_in_torch(backend, fn):
    dev = device_of(backend)
    ours = create_graph_grads(dev, 0)
    theirs = create_graph_grads(dev, 0)
    if fn == "get_total_norm":
        got = mopt_fast.get_total_norm([p.grad for p in ours])
        want = torch.nn.utils.get_total_norm([p.grad for p in theirs])
    elif fn == "clip_grad_norm_":
        got = mopt_fast.clip_grad_norm_(ours, 0.1)
        want = torch.nn.utils.clip_grad_norm_(theirs, 0.1)
    else:
        got = mopt_fast.unscale_clip_grad_norm_(ours, 0.1, *amp_pair(dev))
        want = torch.nn.utils.get_total_norm([p.grad for p in theirs])
    assert (got.requires_grad, got.grad_fn) == (want.requires_grad, want.grad_fn) == (False, None)
    # The gradients keep their own graph, as torch leaves them.
    assert [p.grad.requires_grad for p in ours] == [p.grad.requires_grad for p in theirs]


def test_op_level_outputs_do_not_require_grad():
    """At the dispatcher, not only through the functional API's no_grad."""
    skip_unless_available("cpu")
    x = torch.randn(10, requires_grad=True)
    with torch.enable_grad():
        total, per = torch.ops.mopt_fast.norm([x * 2], 2.0, True)
    assert not total.requires_grad and not per.requires_grad


def namespaces():
    out = []
    if mopt_fast.registry.unavailable_reason("cpu") is None:
        out.append("mopt_fast")
    if mopt_fast.registry.unavailable_reason("triton") is None:
        from mopt_fast import triton_kernels  # noqa: F401  (registers mopt_fast_triton)

        out.append("mopt_fast_triton")
    return out


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_autograd_and_inplace_kernels(op):
    spaces = namespaces()
    if not spaces:
        pytest.skip("no compiled backend here")
    for ns in spaces:
        overload = getattr(getattr(torch.ops, ns), op).default
        name = f"{ns}::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd"), name
        if overload._schema.is_mutable:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "ADInplaceOrView"), name

