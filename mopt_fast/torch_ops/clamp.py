from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops._rounds import write_in_rounds

# The largest limit every supported dtype can hold (fp16's largest finite value).
_EVERY_DTYPE_HOLDS = torch.finfo(torch.float16).max


def _clamp(tensors: list[torch.Tensor], v: float) -> None:
    # torch's scalar ops refuse a limit their dtype cannot hold (1e30 for fp16 gradients). The
    # compiled kernels clamp in the compute type (fp32 for fp16/bf16) and round the result to the
    # gradient's dtype, so such groups do exactly that here, and every backend gives one result.
    if v <= _EVERY_DTYPE_HOLDS:  # the usual limit: no look at each tensor's dtype
        fits, wide = tensors, []
    else:
        fits = [t for t in tensors if v <= torch.finfo(t.dtype).max]
        wide = [t for t in tensors if v > torch.finfo(t.dtype).max]
    if fits:
        if fits[0].device.type in ("cpu", "cuda"):
            torch._foreach_clamp_min_(fits, -v)
            torch._foreach_clamp_max_(fits, v)
        else:
            for t in fits:
                t.clamp_(min=-v, max=v)
    for t in wide:
        compute = torch.float64 if t.dtype == torch.float64 else torch.float32
        limit = v if v <= torch.finfo(compute).max else float("inf")
        t.copy_(t.to(compute).clamp_(min=-limit, max=limit))


@torch.no_grad()
def clamp_inplace(tensors: list[torch.Tensor], clip_value: float) -> None:
    """Clamp to [-clip_value, clip_value] with torch's two foreach passes."""
    _validate.check_tensors(tensors, "clamp")
    v = _validate.non_negative(clip_value, "clip_value")
    write_in_rounds(lambda group: _clamp(group, v), tensors)
