"""In-place AMP unscale: x *= inv_scale; found_inf = 1 when any input is inf/NaN (never cleared).
Per-chunk flags, folded into found_inf on the device."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, acc_dtype, chunk_of, make_plan


@triton.jit
def _unscale_kernel(table, n_tensors, n_chunks, inv_scale_ptr, flags, DTYPE: tl.constexpr,
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
    tl.store(flags + tl.program_id(0), (bad != bad).to(tl.int32))


def unscale_inplace(tensors, found_inf, inv_scale) -> None:
    _validate.check_tensors(tensors, "unscale")
    device = tensors[0].device
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale")
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale")
    plan = make_plan(tensors)
    for g in plan.groups:
        if g.n_chunks:
            flags = torch.empty(g.n_chunks, dtype=torch.int32, device=device)
            _unscale_kernel[(g.n_chunks,)](g.table, g.n_tensors, g.n_chunks, inv_scale, flags,
                                           DTYPE=g.tl_dtype, ACC=acc_dtype(g.dtype),
                                           CHUNK=CHUNK, BLOCK=BLOCK)
            found_inf.copy_(torch.maximum(found_inf, flags.max().to(found_inf.dtype).reshape(found_inf.shape)))
    plan.write_back()
