"""In-place clamp to [-v, v] in one pass; NaN stays NaN."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, acc_dtype, chunk_of, write_plans


@triton.jit
def _clamp_kernel(table, n_tensors, n_chunks, limit_ptr, DTYPE: tl.constexpr, ACC: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    base, start, end = chunk_of(table, n_tensors, n_chunks, DTYPE, CHUNK)
    hi = tl.load(limit_ptr).to(ACC)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < end
        x = tl.load(base + idx, mask=mask, other=0.0).to(ACC)
        y = tl.minimum(tl.maximum(x, -hi), hi)
        tl.store(base + idx, tl.where(x != x, x, y).to(DTYPE), mask=mask)


def clamp_inplace(tensors, clip_value: float) -> None:
    _validate.check_tensors(tensors, "clamp")
    v = _validate.non_negative(clip_value, "clip_value")
    # Float arguments reach Triton kernels as fp32; fp64 gradients need the limit in fp64.
    limit = torch.full((), v, dtype=torch.float64, device=tensors[0].device)
    for plan in write_plans(tensors):  # one plan, or one per round of a list sharing memory
        for g in plan.groups:
            if g.n_chunks:
                _clamp_kernel[(g.n_chunks,)](g.table, g.n_tensors, g.n_chunks, limit, DTYPE=g.tl_dtype,
                                             ACC=acc_dtype(g.dtype), CHUNK=CHUNK, BLOCK=BLOCK)
        plan.write_back()
