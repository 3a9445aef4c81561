"""In-place scale by a factor computed on the device:
factor = scale * min(1, max_norm / (total_norm + 1e-6)); nothing is stored when found_inf is set
or the factor is exactly 1 (the stores are masked off; no host sync decides it)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast.triton_kernels._apply import BLOCK, CHUNK, acc_dtype, chunk_of, write_plans


@triton.jit
def _scale_kernel(table, n_tensors, n_chunks, scale_ptr, norm_ptr, found_ptr, max_norm_ptr,
                  HAS_SCALE: tl.constexpr, HAS_NORM: tl.constexpr, HAS_FOUND: tl.constexpr,
                  DTYPE: tl.constexpr, ACC: tl.constexpr, NORM_ACC: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    base, start, end = chunk_of(table, n_tensors, n_chunks, DTYPE, CHUNK)
    factor = tl.full([], 1.0, NORM_ACC)
    if HAS_SCALE:
        factor = tl.load(scale_ptr).to(NORM_ACC)
    if HAS_NORM:
        # In the norm's precision, as torch computes the clip coefficient.
        coef = tl.load(max_norm_ptr).to(NORM_ACC) / (tl.load(norm_ptr).to(NORM_ACC) + 1e-6)
        coef = tl.where(coef != coef, coef, tl.minimum(coef, 1.0))
        factor = factor * coef
    active = factor != 1.0
    if HAS_FOUND:
        active = active & (tl.load(found_ptr) == 0)
    f = factor.to(ACC)
    stop = tl.where(active, end, start)  # an inactive chunk masks every load and store off
    for off in range(0, CHUNK, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < stop
        x = tl.load(base + idx, mask=mask, other=0.0).to(ACC)
        tl.store(base + idx, (x * f).to(DTYPE), mask=mask)


def scale_inplace(tensors, scale, total_norm, max_norm: float, found_inf) -> None:
    _validate.scale_args(tensors, scale, total_norm, max_norm, found_inf)
    if scale is None and total_norm is None:
        return
    any_arg = next(t for t in (scale, total_norm) if t is not None)
    norm_acc = acc_dtype(total_norm.dtype) if total_norm is not None else acc_dtype(scale.dtype)
    # Float arguments reach Triton kernels as fp32; an fp64 norm needs max_norm in fp64.
    limit = torch.full((), float(max_norm), dtype=torch.float64, device=tensors[0].device)
    for plan in write_plans(tensors):  # one plan, or one per round of a list sharing memory
        for g in plan.groups:
            if g.n_chunks:
                _scale_kernel[(g.n_chunks,)](
                    g.table, g.n_tensors, g.n_chunks,
                    scale if scale is not None else any_arg,
                    total_norm if total_norm is not None else any_arg,
                    found_inf if found_inf is not None else any_arg,
                    limit,
                    HAS_SCALE=scale is not None, HAS_NORM=total_norm is not None,
                    HAS_FOUND=found_inf is not None, DTYPE=g.tl_dtype, ACC=acc_dtype(g.dtype),
                    NORM_ACC=norm_acc, CHUNK=CHUNK, BLOCK=BLOCK)
        plan.write_back()
