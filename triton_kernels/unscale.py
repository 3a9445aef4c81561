"""In-place AMP unscale: x *= inv_scale; found_inf = 1 when any input is inf/NaN (never cleared).
Each program that sees an inf/NaN stores 1.0 into found_inf itself (same value: no atomics)."""
from __future__ import annotations

import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, acc_dtype, chunk_of, write_plans


@triton.jit
def _unscale_kernel(table, n_tensors, n_chunks, inv_scale_ptr, found_ptr, DTYPE: tl.constexpr,
                    ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    base, start, end = chunk_of(table, n_tensors, n_chunks, DTYPE, CHUNK)
    s = tl.load(inv_scale_ptr).to(ACC)
    check = tl.zeros([BLOCK], dtype=ACC)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < end
        x = tl.load(base + idx, mask=mask, other=0.0).to(ACC)
        check += x * 0.0  # NaN exactly when x is inf or NaN
        tl.store(base + idx, (x * s).to(DTYPE), mask=mask)
    bad = tl.sum(check, axis=0)
    tl.store(found_ptr, 1.0, mask=bad != bad)


def unscale_inplace(tensors, found_inf, inv_scale) -> None:
    _validate.check_tensors(tensors, "unscale")
    device = tensors[0].device
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale")
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale")
    for plan in write_plans(tensors):  # one plan, or one per round of a list sharing memory
        for g in plan.groups:
            if g.n_chunks:
                _unscale_kernel[(g.n_chunks,)](g.table, g.n_tensors, g.n_chunks, inv_scale, found_inf,
                                               DTYPE=g.tl_dtype, ACC=acc_dtype(g.dtype),
                                               CHUNK=CHUNK, BLOCK=BLOCK)
        plan.write_back()
