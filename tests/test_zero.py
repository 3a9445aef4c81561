"""zero_grad_ (the `zero_inplace` op)."""
import pytest
import torch
from hypothesis import given

import mopt_fast

from helpers import build, device_of, grad_lists, params_with


@given(case=grad_lists(nonfinite=True))
def test_zero_grad_in_place(backend, case):
    grads = build(*case, device=device_of(backend))
    params = params_with(grads)
    mopt_fast.zero_grad_(params, set_to_none=False)
    for p, g in zip(params, grads):
        assert p.grad is g  # same storage, zeroed in place
        assert torch.equal(g, torch.zeros_like(g)) and not torch.signbit(g).any()


def test_zero_grad_set_to_none(backend):
    params = params_with(build(31, [(100, torch.float32, "contiguous", 1.0, None)], device=device_of(backend)))
    mopt_fast.zero_grad_(params)
    assert params[0].grad is None


def _zero_grad_state(params):
    """What zero_grad leaves behind, per parameter: the gradient's graph links and its values."""
    return [(p.grad.grad_fn is None, p.grad.requires_grad, p.grad.is_leaf, p.grad.to_dense().cpu()) for p in params]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
@pytest.mark.parametrize("how", ["assigned", "create_graph"])
def test_zero_grad_detaches_like_optimizer(backend, how):
    """Gradients with a graph behind them (a grad_fn) are detached in place, leaf gradients that
    require grad stop requiring it: side by side with torch's Optimizer.zero_grad."""
    dev = device_of(backend)

    def make():
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, device=dev))
        q = torch.nn.Parameter(torch.randn(5, 3, device=dev))
        if how == "assigned":
            x = torch.randn(8, device=dev, requires_grad=True)
            p.grad = x * 2
        else:
            (p ** 3).sum().backward(create_graph=True)  # p.grad = 3 p^2, itself differentiable
        q.grad = torch.randn(5, 3, device=dev).requires_grad_(True)  # a leaf that requires grad
        assert p.grad.grad_fn is not None and q.grad.grad_fn is None and q.grad.requires_grad
        return [p, q]

    ref = make()
    torch.optim.SGD(ref, lr=0.1).zero_grad(set_to_none=False)
    got = make()
    grads = [p.grad for p in got]
    mopt_fast.zero_grad_(got, set_to_none=False)
    assert all(p.grad is g for p, g in zip(got, grads))  # detached and zeroed in place
    assert got[0].grad.grad_fn is None and not got[0].grad.requires_grad
    for (*links_got, values_got), (*links_ref, values_ref) in zip(_zero_grad_state(got), _zero_grad_state(ref)):
        assert links_got == links_ref
        assert torch.equal(values_got, values_ref) and not values_got.any()


def test_zero_grad_sparse_grads_use_torch(backend):
    """Sparse gradients beside dense ones, on the backend's device: the same as torch's zero_grad."""
    dev = device_of(backend)

    def make():
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4, sparse=True), "lin": torch.nn.Linear(4, 2)}).to(dev)
        model["lin"](model["emb"](torch.tensor([1, 2, 2], device=dev))).sum().backward()
        assert model["emb"].weight.grad.is_sparse and not model["lin"].weight.grad.is_sparse
        return list(model.parameters())

    ref = make()
    torch.optim.SGD(ref, lr=0.1).zero_grad(set_to_none=False)
    got = make()
    grads = [p.grad for p in got]
    mopt_fast.zero_grad_(got, set_to_none=False)
    assert all(p.grad is g for p, g in zip(got, grads))
    for p, r in zip(got, ref):
        assert p.grad.layout == r.grad.layout
        assert torch.equal(p.grad.to_dense(), r.grad.to_dense()) and not p.grad.to_dense().any()
