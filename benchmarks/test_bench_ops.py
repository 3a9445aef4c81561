"""torch's own functions against every mopt_fast backend, in one run.

    make bench        (or: pytest benchmarks --benchmark-json=out/bench.json; python benchmarks/report.py out/bench.json)

In-place cases restore the gradients before every round (outside the timed region), so every
round sees the same values. Each benchmark records the bytes the op must move in extra_info.
"""
from __future__ import annotations

import pytest
import torch
from grad_sets import PASSES, SETS, make_params, numel

import mopt_fast

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ["torch"] + [f"mopt_{b}" for b in mopt_fast.available_backends() if b in ("cpu", "torch")]
MAX_NORM = 1e-3  # small enough that clipping always scales


_OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}


def _torch_optimizer(params) -> torch.optim.Optimizer:
    key = id(params)
    if key not in _OPTIMIZERS:
        _OPTIMIZERS.clear()
        _OPTIMIZERS[key] = torch.optim.SGD(params, lr=0.1, foreach=True)
    return _OPTIMIZERS[key]


def _torch_amp_pipeline(params, grads, inv, found):
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    return torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)


TORCH = {
    "norm": lambda params, grads, inv, found: torch.nn.utils.get_total_norm(grads),
    "clip_norm": lambda params, grads, inv, found: torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True),
    "clip_value": lambda params, grads, inv, found: torch.nn.utils.clip_grad_value_(params, 0.01, foreach=True),
    "scale": lambda params, grads, inv, found: torch._foreach_mul_(grads, 0.5),
    # What a torch user calls to zero gradients in place: it walks the parameters, as ours does.
    "zero": lambda params, grads, inv, found: _torch_optimizer(params).zero_grad(set_to_none=False),
    "unscale": lambda params, grads, inv, found: torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv),
    "amp_pipeline": _torch_amp_pipeline,
}

MOPT = {
    "norm": lambda params, grads, inv, found: mopt_fast.get_total_norm(grads),
    "clip_norm": lambda params, grads, inv, found: mopt_fast.clip_grad_norm_(params, MAX_NORM),
    "clip_value": lambda params, grads, inv, found: mopt_fast.clip_grad_value_(params, 0.01),
    "scale": lambda params, grads, inv, found: mopt_fast.scale_grads_(params, 0.5),
    "zero": lambda params, grads, inv, found: mopt_fast.zero_grad_(params, set_to_none=False),
    "unscale": lambda params, grads, inv, found: mopt_fast.unscale_grads_(params, inv, found),
    "amp_pipeline": lambda params, grads, inv, found: mopt_fast.unscale_clip_grad_norm_(params, MAX_NORM, inv, found),
}

ROUNDS = {"gpt2_124m": 8, "many_small": 60, "large": 15}

# One allocation of each gradient set, shared by torch and every backend: separately allocated
# sets can differ 2x in streaming bandwidth on this machine (how the pages got mapped), which
# would be measured as a difference between implementations.
_SETS: dict[tuple[str, str], tuple[list, list]] = {}


def gradient_set(set_name: str, dtype_name: str):
    key = (set_name, dtype_name)
    if key not in _SETS:
        params = make_params(set_name, DTYPES[dtype_name])
        _SETS[key] = (params, [p.grad.clone() for p in params])
    return _SETS[key]


def _run(benchmark, case, set_name, dtype_name, fn, group):
    params, originals = gradient_set(set_name, dtype_name)
    grads = [p.grad for p in params]
    inv = torch.full((1,), 1.0 / 65536)
    found = torch.zeros(1)
    nbytes = numel(params) * grads[0].element_size() * PASSES[case]
    benchmark.group = group
    benchmark.extra_info.update(case=case, set=set_name, dtype=dtype_name, bytes=nbytes)

    def reset():
        torch._foreach_copy_(grads, originals)
        found.zero_()

    benchmark.pedantic(lambda: fn(params, grads, inv, found), setup=reset,
                       rounds=ROUNDS[set_name], iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("case", list(TORCH))
@pytest.mark.parametrize("impl", IMPLS)
def test_op(benchmark, impl, case, set_name, dtype_name):
    group = f"{case}/{set_name}/{dtype_name}"
    benchmark.extra_info["impl"] = impl
    if impl == "torch":
        _run(benchmark, case, set_name, dtype_name, TORCH[case], group)
    else:
        with mopt_fast.use_backend(impl.removeprefix("mopt_")):
            _run(benchmark, case, set_name, dtype_name, MOPT[case], group)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("set_name", list(SETS))
def test_roofline(benchmark, set_name, dtype_name):
    """The floor for the AMP pipeline: torch's single-tensor read pass (an fp32 norm) and in-place
    pass (mul_) over one flat fp32 buffer holding as many bytes as the gradient set."""
    nbytes = numel(gradient_set(set_name, dtype_name)[0]) * DTYPES[dtype_name].itemsize
    flat = torch.randn(nbytes // 4)
    original = flat.clone()
    benchmark.group = f"amp_pipeline/{set_name}/{dtype_name}"
    benchmark.extra_info.update(impl="roofline", case="roofline", set=set_name, dtype=dtype_name,
                                bytes=nbytes * PASSES["roofline"])

    def passes():
        torch.linalg.vector_norm(flat)
        flat.mul_(0.5)

    def reset():
        flat.copy_(original)

    benchmark.pedantic(passes, setup=reset, rounds=ROUNDS[set_name],
                       iterations=1, warmup_rounds=1)
