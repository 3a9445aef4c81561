"""GPU benchmarks: torch against mopt_fast's cuda and triton backends on the CPU sets plus a
1B-parameter set, fp32 and bf16, with a device-to-device copy of the same bytes measured in the
same run as the bandwidth ceiling. Skipped without a CUDA device; run by benchmarks/gpu_check.sh.

Each timed call ends with torch.cuda.synchronize(), so times include the launch overhead a
training step pays.
"""
from __future__ import annotations

import pytest
import torch
from grad_sets import GPU_SETS, PASSES, make_params, numel
from test_bench_ops import MOPT, TORCH

import mopt_fast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ["torch", "mopt_cuda", "mopt_triton"]
ROUNDS = {"gpt2_124m": 50, "many_small": 100, "large": 50, "gpt_1b": 20}
_CACHE: dict = {}


def _setup(set_name, dtype_name):
    key = (set_name, dtype_name)
    if key not in _CACHE:
        _CACHE.clear()
        torch.cuda.empty_cache()
        params = make_params(set_name, DTYPES[dtype_name], device="cuda")
        _CACHE[key] = (params, [p.grad.clone() for p in params])
    return _CACHE[key]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("set_name", list(GPU_SETS))
@pytest.mark.parametrize("case", list(TORCH))
@pytest.mark.parametrize("impl", IMPLS)
def test_gpu_op(benchmark, impl, case, set_name, dtype_name):
    backend = impl.removeprefix("mopt_")
    if impl != "torch" and backend not in mopt_fast.available_backends():
        pytest.skip(f"backend {backend} not available")
    params, originals = _setup(set_name, dtype_name)
    grads = [p.grad for p in params]
    inv = torch.full((1,), 1.0 / 65536, device="cuda")
    found = torch.zeros(1, device="cuda")
    fn = TORCH[case] if impl == "torch" else MOPT[case]
    benchmark.group = f"{case}/{set_name}/{dtype_name}"
    benchmark.extra_info.update(impl=impl, case=case, set=set_name, dtype=dtype_name,
                                bytes=numel(params) * grads[0].element_size() * PASSES[case])

    def reset():
        torch._foreach_copy_(grads, originals)
        found.zero_()
        torch.cuda.synchronize()

    def timed():
        fn(params, grads, inv, found)
        torch.cuda.synchronize()

    if impl == "torch":
        benchmark.pedantic(timed, setup=reset, rounds=ROUNDS[set_name], iterations=1, warmup_rounds=2)
    else:
        with mopt_fast.use_backend(backend):
            benchmark.pedantic(timed, setup=reset, rounds=ROUNDS[set_name], iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("set_name", list(GPU_SETS))
def test_gpu_copy_ceiling(benchmark, set_name, dtype_name):
    """Device-to-device copy of the set's bytes: read + write, the bandwidth ceiling."""
    params, _ = _setup(set_name, dtype_name)
    nbytes = numel(params) * DTYPES[dtype_name].itemsize
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    benchmark.group = f"copy/{set_name}/{dtype_name}"
    benchmark.extra_info.update(impl="copy", case="copy", set=set_name, dtype=dtype_name, bytes=2 * nbytes)

    def timed():
        dst.copy_(src)
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=ROUNDS[set_name], iterations=1, warmup_rounds=2)
