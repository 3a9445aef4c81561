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


# -- the clip that follows reuses the logged pass ------------------------------------------------
def _params_with_grads(dev: str, seed: int = 3, n: int = 5) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for i in range(n):
        p = torch.nn.Parameter(torch.empty(40 + i, 3, device=dev))
        p.grad = (torch.randn(3, 40 + i, generator=gen) * 10).to(dev).t()  # non-contiguous
        params.append(p)
    return params


class _NormPasses(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts read passes of the compiled norm kernels (one per call of the op)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("mopt_fast", "mopt_fast_triton") and func.__name__.startswith("norm"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _clip_after(log, params, p=2.0, between=None):
    """grad_norm-like `log`, then the precision plugins' clip (which may reuse a logged norm); the
    clip's returned norm and the number of read passes the clip made."""
    from mopt_fast.functional import _clip_grad_norm

    log(params)
    if between is not None:
        between(params)
    passes = _NormPasses()
    with passes:
        total = _clip_grad_norm(list(params), 0.5, p, False, [], reuse_logged=True)
    return total, passes.count


def _as_module(params):
    module = torch.nn.Module()
    for i, q in enumerate(params):
        module.register_parameter(f"w{i}", q)
    return module


@pytest.mark.parametrize("p", [2.0, math.inf, 1.5])
@pytest.mark.parametrize("logger", ["grad_norm", "group_grad_norms"])
def test_a_clip_after_logging_reuses_the_pass_and_clips_bitwise_the_same(backend, p, logger):
    dev = device_of(backend)
    fresh = _params_with_grads(dev)
    reused = _params_with_grads(dev)
    ref_total = mopt_fast.clip_grad_norm_(fresh, 0.5, p)  # no logged norm before it
    log = {"grad_norm": lambda ps: mopt_fast.grad_norm(_as_module(ps), p),
           "group_grad_norms": lambda ps: mopt_fast.group_grad_norms([ps[:2], ps[2:]], p)}[logger]
    total, passes = _clip_after(log, reused, p)
    if backend in ("cpu", "triton"):
        assert passes == 0  # the logged pass was reused
    assert torch.equal(total, ref_total)
    for a, b in zip(reused, fresh):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("change", ["written", "other_norm_type", "other_order", "new_grads", "subset"])
def test_the_logged_norm_is_not_reused_for_other_gradients(backend, change):
    dev = device_of(backend)
    params = _params_with_grads(dev)
    p_clip = 1.0 if change == "other_norm_type" else 2.0

    def between(ps):
        if change == "written":
            ps[1].grad.mul_(3.0)  # in place: its version counter moves
        elif change == "new_grads":
            for q in ps:
                q.grad = q.grad.clone()
        elif change == "other_order":
            ps.reverse()
        elif change == "subset":
            del ps[0]

    expected_params = _params_with_grads(dev)
    between(expected_params)
    expected = mopt_fast.clip_grad_norm_(expected_params, 0.5, p_clip)
    total, passes = _clip_after(lambda ps: mopt_fast.grad_norm(_as_module(ps), 2.0), params, p_clip, between)
    if backend in ("cpu", "triton"):
        assert passes == 1  # read again
    assert torch.equal(total, expected)
    for a, b in zip(params, expected_params):
        assert torch.equal(a.grad, b.grad)


def test_the_public_clip_never_reuses_a_logged_norm(backend):
    # A write through .data moves no version counter: only the precision plugins, which know that
    # nothing but their hook ran since, may reuse a logged norm. torch's clip is the reference.
    dev = device_of(backend)
    params, expected = _params_with_grads(dev), _params_with_grads(dev)
    mopt_fast.grad_norm(_as_module(params), 2.0)
    for q, e in zip(params, expected):
        q.grad.data.mul_(10.0)
        e.grad.mul_(10.0)
    total = mopt_fast.clip_grad_norm_(params, 0.5)
    ref = torch.nn.utils.clip_grad_norm_(expected, 0.5)
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=0)
    for q, e in zip(params, expected):
        torch.testing.assert_close(q.grad, e.grad, rtol=1e-5, atol=1e-7)


def test_a_norm_logged_before_the_step_began_is_not_reused():
    # The plugins forget any logged norm as their optimizer step begins.
    from mopt_fast.functional import _clip_grad_norm, forget_logged_norm

    params = _params_with_grads("cpu")
    mopt_fast.grad_norm(_as_module(params), 2.0)
    forget_logged_norm()
    passes = _NormPasses()
    with passes:
        _clip_grad_norm(params, 0.5, 2.0, False, [], reuse_logged=True)
    assert passes.count == 1


def test_the_memo_holds_no_gradient_alive():
    import gc
    import weakref

    params = _params_with_grads("cpu")
    mopt_fast.grad_norm(_as_module(params), 2.0)
    ref = weakref.ref(params[0].grad)
    for q in params:
        q.grad = None  # zero_grad(set_to_none=True)
    gc.collect()
    assert ref() is None


# -- in a Trainer: log grad norms in on_before_optimizer_step, clip by norm: one read pass ---------
def _fit_logging_norms(framework: str, log_with: str | None, plugin=None, precision: str = "32-true"):
    """A short fit with clip-by-norm that logs the gradient norms `log_with` ("mopt_fast",
    "lightning" or None) in on_before_optimizer_step; the module, the logged values of the last
    step and the norm kernel's read passes per step."""
    from lightning_cases import frameworks, make_data

    base, trainer_cls = frameworks(framework)
    norm_fn = {"mopt_fast": mopt_fast.grad_norm, "lightning": lightning_grad_norm() if log_with == "lightning" else None,
               None: None}[log_with]

    class Net(base):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.body(x), y)

        def on_before_optimizer_step(self, optimizer):
            if norm_fn is not None:
                self.log_dict(norm_fn(self, 2))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    model = Net()
    kwargs = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, gradient_clip_val=0.05, accelerator="cpu")
    if precision != "32-true":
        kwargs["precision"] = precision
    if plugin is not None:
        kwargs["plugins"] = [plugin]
    trainer = trainer_cls(**kwargs)
    passes = _NormPasses()
    train, _ = make_data()
    with passes:
        trainer.fit(model, train)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return model, logged, passes.count / trainer.global_step


def test_logging_grad_norms_in_the_trainer_costs_no_second_pass_and_changes_nothing():
    ref_model, ref_logged, _ = _fit_logging_norms("lightning", "lightning")
    model, logged, passes = _fit_logging_norms("mopt_fast", "mopt_fast")
    quiet_model, _, quiet_passes = _fit_logging_norms("mopt_fast", None)
    assert passes == 1 and quiet_passes == 1  # logging the norms adds no read pass
    for a, b in zip(model.parameters(), quiet_model.parameters()):
        assert torch.equal(a, b)  # and changes no weight
    assert logged.keys() == ref_logged.keys() and len(logged) == 5
    for key in logged:
        assert math.isclose(logged[key], ref_logged[key], rel_tol=1e-5), key
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # Lightning's clip: torch's kernel


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_logging_grad_norms_under_mixed_precision_costs_no_second_pass(precision):
    # 16-mixed: the hooks see the unscaled gradients (GradScaler.unscale_), the clip reuses
    # their logged norm.
    model, logged, passes = _fit_logging_norms("mopt_fast", "mopt_fast", precision=precision)
    quiet_model, _, quiet_passes = _fit_logging_norms("mopt_fast", None, precision=precision)
    assert passes == quiet_passes == 1  # (16-mixed's unscale pass is another op, not a norm)
    for a, b in zip(model.parameters(), quiet_model.parameters()):
        assert torch.equal(a, b)
    assert all(math.isfinite(v) for v in logged.values()) and len(logged) == 5


def test_logging_grad_norms_under_lightnings_trainer_with_the_plugin_costs_no_second_pass():
    from mopt_fast.lightning import precision_plugin

    importorskip_unless_ci("lightning")
    model, _, passes = _fit_logging_norms("lightning", "mopt_fast", plugin=precision_plugin("32-true"))
    quiet_model, _, quiet_passes = _fit_logging_norms("lightning", None, plugin=precision_plugin("32-true"))
    assert passes == 1 and quiet_passes == 1
    for a, b in zip(model.parameters(), quiet_model.parameters()):
        assert torch.equal(a, b)
