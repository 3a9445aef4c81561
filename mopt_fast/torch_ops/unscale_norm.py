from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast._ops import result_dtype
from mopt_fast.torch_ops.norm import per_tensor_norms


@torch.no_grad()
def unscale_norm(
    tensors: list[torch.Tensor],
    inv_scale: torch.Tensor,
    found_inf: torch.Tensor,
    norm_type: float,
    per_tensor: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm of tensors * inv_scale; sets found_inf when any value is inf/NaN. Writes no tensor.

    Uses norm(c * x) = |c| * norm(x), so nothing is materialized, and tells inf/NaN values from
    the norms' finiteness, so there is one read pass. Limitation of this fallback: fp32 sums of
    |x|^p overflow for |x| above ~1e19 (fp32/bf16 gradients), which then also sets found_inf; the
    compiled kernels check the values themselves and redo such sums in fp64.
    """
    _validate.check_tensors(tensors, "unscale_norm", writes=False)
    device = tensors[0].device
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale_norm")
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale_norm")
    p = _validate.norm_type(norm_type)
    dtype = result_dtype(tensors)
    norms = per_tensor_norms(tensors, p)
    stacked = torch.stack([n.to(dtype) for n in norms])
    nonfinite = ~torch.isfinite(stacked).all()
    found_inf.copy_(torch.where(nonfinite, torch.ones_like(found_inf), found_inf))
    stacked = stacked * inv_scale.reshape(()).abs().to(dtype)
    total = torch.linalg.vector_norm(stacked, p)
    return total, stacked if per_tensor else stacked.new_empty(0)
