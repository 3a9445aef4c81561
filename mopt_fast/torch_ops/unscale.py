from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops._rounds import write_in_rounds


@torch.no_grad()
def unscale_inplace(
    tensors: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> None:
    """torch._amp_foreach_non_finite_check_and_unscale_ itself: the semantics we promise."""
    _validate.check_tensors(tensors, "unscale")
    device = tensors[0].device
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale")
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale")
    write_in_rounds(
        lambda group: torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale), tensors
    )
    # torch's AMP op bumps no version counter; every mopt_fast op bumps what it writes.
    for t in (*tensors, found_inf):
        torch.autograd.graph.increment_version(t)
