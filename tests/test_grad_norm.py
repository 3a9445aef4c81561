"""mopt_fast.grad_norm (Lightning's ``grad_norm`` from one fused read pass) and
mopt_fast.group_grad_norms, on every backend, against a float64 reference and side by side with
Lightning's own function."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mopt_fast

from helpers import build, device_of, grad_lists, importorskip_unless_ci, isclose, ref_norm, result_dtype

NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 1.5, "inf", 2]
# One rounding of the fp32 norm to the gradient's dtype, against torch's own rounding: 1 ulp.
ULP = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7, torch.float32: 2e-6, torch.float64: 1e-12}


def lightning_grad_norm():
    return importorskip_unless_ci("lightning.pytorch.utilities").grad_norm


def module_with(grads: list[torch.Tensor]) -> torch.nn.Module:
    """A module with one parameter per gradient, named as a nested model names them (dots), and
    one parameter without a gradient (left out by both functions)."""
    root, inner = torch.nn.Module(), torch.nn.Module()
    root.inner = inner
    for i, g in enumerate(grads):
        p = torch.nn.Parameter(torch.empty(g.shape, dtype=g.dtype, device=g.device))
        p.grad = g
        (inner if i % 2 else root).register_parameter(f"w{i}", p)
    root.register_parameter("frozen", torch.nn.Parameter(torch.ones(3, device=grads[0].device)))
    return root


def rtol_for(tensors, p):
    if all(t.dtype == torch.float64 for t in tensors):
        return 1e-10
    return 2e-5 if p in (1.0, 2.0, math.inf) else 1e-4


def close_in_dtype(value: float, expected: float, dtype: torch.dtype) -> bool:
    """`value` is `expected` rounded to `dtype` (above fp16's range: inf, as torch's), within 2 ulp."""
    expected = torch.tensor(expected, dtype=torch.float64).to(dtype).item()
    if math.isnan(expected) or math.isinf(expected):
        return isclose(value, expected, 0.0) or value == expected
    return abs(value - expected) <= 2 * ULP[dtype] * abs(expected) + 1e-30


@settings(max_examples=20)  # each example also runs Lightning's function
@given(case=grad_lists(max_tensors=7, nonfinite=True), norm_type=st.sampled_from(NORM_TYPES))
def test_grad_norm_matches_float64_and_lightning(backend, case, norm_type):
    grads = build(*case, device=device_of(backend))
    before = [g.clone() for g in grads]
    module = module_with(grads)
    p = float(norm_type)
    ours = mopt_fast.grad_norm(module, norm_type)
    theirs = lightning_grad_norm()(module, norm_type)
    assert list(ours) == list(theirs)  # the same keys, in the same order
    named = {n: q.grad for n, q in module.named_parameters() if q.grad is not None}
    for name, g in named.items():
        key = f"grad_{p}_norm/{name}"
        value = ours[key]
        assert value.dtype == g.dtype == theirs[key].dtype and value.device == g.device
        assert not value.requires_grad
        expected = ref_norm([g], p)
        assert close_in_dtype(value.item(), expected, g.dtype), (name, value.item(), expected)
        assert close_in_dtype(value.item(), theirs[key].item(), g.dtype), (name, value.item(), theirs[key].item())
    total = ours[f"grad_{p}_norm_total"]
    assert total.dtype == result_dtype(grads) and total.device == grads[0].device and total.shape == ()
    assert isclose(total.item(), ref_norm(grads, p), rtol_for(grads, p))
    for g, b in zip(grads, before):  # read-only
        assert torch.equal(g, b) or (g.isnan() == b.isnan()).all()


def test_grad_norm_separator_no_gradients_and_bad_norm_type(backend):
    dev = device_of(backend)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(dev)
    assert mopt_fast.grad_norm(module, 2) == lightning_grad_norm()(module, 2) == {}  # no gradients yet
    module(torch.randn(5, 4, device=dev)).square().sum().backward()
    ours = mopt_fast.grad_norm(module, 2, group_separator="::")
    assert list(ours) == list(lightning_grad_norm()(module, 2, group_separator="::"))
    assert "grad_2.0_norm::0.weight" in ours
    for bad in (0, -1.0, "-inf"):
        with pytest.raises(ValueError) as theirs:
            lightning_grad_norm()(module, bad)
        with pytest.raises(ValueError, match="must be a positive number") as mine:
            mopt_fast.grad_norm(module, bad)
        assert str(mine.value) == str(theirs.value)


def test_grad_norm_refuses_a_sparse_gradient_and_changes_nothing(backend):
    dev = device_of(backend)
    module = torch.nn.Linear(4, 3).to(dev)
    module(torch.randn(5, 4, device=dev)).square().sum().backward()
    before = module.weight.grad.clone()
    module.bias.grad = torch.randn(3, device=dev).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        mopt_fast.grad_norm(module, 2)
    assert torch.equal(module.weight.grad, before)


@settings(max_examples=20)  # each example makes three calls
@given(case=grad_lists(max_tensors=8), cuts=st.lists(st.integers(0, 8), max_size=3),
       p=st.sampled_from([2.0, 1.0, math.inf, 3.0]))
def test_group_grad_norms_match_float64(backend, case, cuts, p):
    grads = build(*case, device=device_of(backend))
    params = [torch.nn.Parameter(torch.empty(g.shape, dtype=g.dtype, device=g.device)) for g in grads]
    for q, g in zip(params, grads):
        q.grad = g
    bounds = sorted({min(c, len(params)) for c in cuts} | {0, len(params)})
    groups = [params[a:b] for a, b in zip(bounds, bounds[1:])] + [[]]  # an empty group too
    groups[0].append(torch.nn.Parameter(torch.ones(2, device=grads[0].device)))  # no gradient
    optimizer = torch.optim.SGD([{"params": g} for g in groups if g], lr=0.1)
    for given_as in (groups, optimizer, optimizer.param_groups):
        per_group, total = mopt_fast.group_grad_norms(given_as, p)
        kept = groups if given_as is groups else [g for g in groups if g]
        assert len(per_group) == len(kept)
        for norm, group in zip(per_group, kept):
            group_grads = [q.grad for q in group if q.grad is not None]
            assert norm.shape == () and not norm.requires_grad
            assert isclose(norm.item(), ref_norm(group_grads, p), rtol_for(group_grads or grads, p))
        assert isclose(total.item(), ref_norm(grads, p), rtol_for(grads, p))
        assert total.dtype == result_dtype(grads)


class _Calls(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts host reads of tensor values (each a device-to-host sync on a GPU) and the norm
    kernel's calls and aten's vector norms (each a read pass over a gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.host_reads = self.fused_passes = self.vector_norms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.host_reads += 1
        if func.namespace in ("mopt_fast", "mopt_fast_triton") and func.__name__.startswith("norm"):
            self.fused_passes += 1
        if func in (torch.ops.aten.linalg_vector_norm.default, torch.ops.aten.norm.Scalar):
            self.vector_norms += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend_name", ["cpu", "triton"])
def test_one_fused_pass_and_no_host_read_where_lightning_makes_one_per_parameter(backend_name):
    from helpers import skip_unless_available

    skip_unless_available(backend_name)
    dev = device_of(backend_name)
    module = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)]).to(dev)
    module(torch.randn(8, 16, device=dev)).square().sum().backward()
    with mopt_fast.use_backend(backend_name), _Calls() as ours:
        mopt_fast.grad_norm(module, 2.0)
        mopt_fast.group_grad_norms([list(module[:3].parameters()), list(module[3:].parameters())], 2.0)
    with _Calls() as theirs:
        lightning_grad_norm()(module, 2.0)
    assert ours.host_reads == 0 and ours.fused_passes == 2 and ours.vector_norms <= 2  # two group norms of norms
    n_params = len(list(module.parameters()))
    # Lightning's: one read pass per parameter, plus the total (whose torch.tensor(list) reads each
    # norm back to the host in C++, out of this mode's sight).
    assert theirs.vector_norms == n_params + 1
