from __future__ import annotations

import torch

from mopt_fast import _validate


@torch.no_grad()
def clamp_inplace(tensors: list[torch.Tensor], clip_value: float) -> None:
    """Clamp to [-clip_value, clip_value] with torch's two foreach passes."""
    _validate.check_tensors(tensors, "clamp")
    v = _validate.non_negative(clip_value, "clip_value")
    if tensors[0].device.type in ("cpu", "cuda"):
        torch._foreach_clamp_min_(tensors, -v)
        torch._foreach_clamp_max_(tensors, v)
    else:
        for t in tensors:
            t.clamp_(min=-v, max=v)
