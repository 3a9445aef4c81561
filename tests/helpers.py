"""Random gradients and float64 references shared by the op tests."""
from __future__ import annotations

import importlib
import math
import os
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

from mopt_fast.registry import unavailable_reason

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "transposed", "strided"]
# (rtol, atol) of one rounding to the dtype, for elementwise results.
ELEMENT_TOL = {
    torch.float32: (2e-6, 1e-30),
    torch.float64: (1e-13, 1e-300),
    torch.float16: (1e-3, 6e-8),
    torch.bfloat16: (8e-3, 1e-30),
}
ALL_BACKENDS = ["cpu", "torch", "cuda", "triton"]


def device_of(backend: str) -> str:
    """cuda and triton run CUDA tensors; without a GPU, triton runs CPU tensors in its interpreter."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def in_ci() -> bool:
    """The environment variable CI is set (as CI services and .ci/run's callers set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def importorskip_unless_ci(name: str) -> Any:
    """pytest.importorskip, except in CI: there a missing module is an error, so tests that need
    it (the Lightning differential tests) cannot quietly skip."""
    if not in_ci():
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"CI is set but {name!r} cannot be imported ({exc}); the tests that need it must run in CI",
                    pytrace=False)


def skip_unless_available(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"backend {backend!r} is not available on this machine: {reason}")


def random_tensor(
    gen: torch.Generator,
    numel: int,
    dtype: torch.dtype,
    layout: str = "contiguous",
    scale: float = 1.0,
    device: str = "cpu",
) -> torch.Tensor:
    """Fresh normal values times `scale`, never zeros, in the requested memory layout."""
    rows = 1
    for r in (64, 16, 4, 2):
        if numel % r == 0 and numel >= r * r:
            rows = r
            break
    cols = numel // rows
    if layout == "contiguous":
        base = torch.randn(numel, generator=gen)
    elif layout == "transposed":  # dense but not contiguous
        base = torch.randn(cols, rows, generator=gen).t()
    elif layout == "strided":  # not dense: every other column of a wider tensor
        # Sliced after the scaling and the cast: both make a new tensor, contiguous when the
        # input is not dense, so slicing first would hand out a contiguous tensor.
        wide = (torch.randn(rows, 2 * cols, generator=gen) * scale).to(dtype=dtype, device=device)
        return wide[:, ::2]
    else:
        raise ValueError(layout)
    return (base * scale).to(dtype=dtype, device=device)


@st.composite
def grad_lists(draw, max_tensors: int = 6, max_numel: int = 65536, dtypes=None, nonfinite=False):
    """A seed plus a description of a random gradient list: sizes 0..max_numel, mixed dtypes and
    layouts, magnitudes from 1e-3 to 1e3. With `nonfinite`, some tensors get an inf, -inf or NaN
    at a random place (the third item of the result says how many were planted)."""
    n = draw(st.integers(1, max_tensors))
    specs = []
    for _ in range(n):
        numel = draw(st.one_of(st.integers(0, 64), st.integers(0, max_numel)))
        dtype = draw(st.sampled_from(dtypes or DTYPES))
        layout = draw(st.sampled_from(LAYOUTS))
        scale = 10.0 ** draw(st.integers(-3, 3))
        bad = draw(st.sampled_from([None, None, math.inf, -math.inf, math.nan])) if nonfinite else None
        specs.append((numel, dtype, layout, scale, bad))
    seed = draw(st.integers(0, 2**31 - 1))
    return seed, specs


def build(seed: int, specs, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for numel, dtype, layout, scale, *bad in specs:
        t = random_tensor(gen, numel, dtype, layout, scale, device)
        if bad and bad[0] is not None and numel > 0:
            t[tuple(torch.randint(s, (1,), generator=gen).item() for s in t.shape)] = bad[0]
        out.append(t)
    return out


def has_nonfinite(tensors: list[torch.Tensor]) -> bool:
    return any(not torch.isfinite(t).all() for t in tensors)


def ref_norm(tensors: list[torch.Tensor], p: float) -> float:
    """float64 norm of the concatenation."""
    flat = [t.detach().double().flatten().cpu() for t in tensors]
    if not flat or sum(f.numel() for f in flat) == 0:
        return 0.0
    return torch.linalg.vector_norm(torch.cat(flat), p).item()


def result_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def assert_close_elementwise(actual: torch.Tensor, expected64: torch.Tensor) -> None:
    """`actual` equals the float64 `expected64` up to one rounding to actual's dtype."""
    rtol, atol = ELEMENT_TOL[actual.dtype]
    torch.testing.assert_close(actual.double(), expected64, rtol=rtol, atol=atol, equal_nan=True)


def params_with(grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.empty(g.shape, dtype=g.dtype, device=g.device))
        p.grad = g
        params.append(p)
    return params


def isclose(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * abs(b) + 1e-30


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the reads of a tensor's value by the host (`.item()`, `float(t)`, `bool(t)` go
    through aten._local_scalar_dense, or aten.item under inference mode): on a GPU each is a
    device-to-host sync."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.count += 1
        return func(*args, **(kwargs or {}))
