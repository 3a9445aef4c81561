"""In-place zero."""
from __future__ import annotations

import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, chunk_of, write_plans


@triton.jit
def _zero_kernel(table, n_tensors, n_chunks, DTYPE: tl.constexpr, CHUNK: tl.constexpr,
                 BLOCK: tl.constexpr):
    base, start, end = chunk_of(table, n_tensors, n_chunks, DTYPE, CHUNK)
    zeros = tl.zeros([BLOCK], dtype=DTYPE)
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        tl.store(base + idx, zeros, mask=idx < end)


def zero_inplace(tensors) -> None:
    _validate.check_tensors(tensors, "zero")
    for plan in write_plans(tensors):  # one plan, or one per round of a list sharing memory
        for g in plan.groups:
            if g.n_chunks:
                _zero_kernel[(g.n_chunks,)](g.table, g.n_tensors, g.n_chunks, DTYPE=g.tl_dtype,
                                            CHUNK=CHUNK, BLOCK=BLOCK)
        plan.write_back()
