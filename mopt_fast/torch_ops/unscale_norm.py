from __future__ import annotations

import torch

from mopt_fast import _validate
from mopt_fast.torch_ops.norm import combine, per_tensor_norms, result_dtype


@torch.no_grad()
def unscale_norm(
    tensors: list[torch.Tensor],
    inv_scale: torch.Tensor,
    found_inf: torch.Tensor,
    norm_type: float,
    per_tensor: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm of tensors * inv_scale; sets found_inf when any value is inf/NaN. Writes no tensor.

    Uses norm(c * x) = |c| * norm(x), so nothing is materialized. The inf/NaN test uses the inf
    norm (a max cannot overflow), which costs a second read here; the compiled kernels fold it
    into the single pass.
    """
    _validate.check_tensors(tensors, "unscale_norm")
    device = tensors[0].device
    _validate.amp_scalar(inv_scale, "inv_scale", device, "unscale_norm")
    _validate.amp_scalar(found_inf, "found_inf", device, "unscale_norm")
    p = _validate.norm_type(norm_type)
    dtype = result_dtype(tensors)
    norms = per_tensor_norms(tensors, p)
    maxes = norms if p == float("inf") else per_tensor_norms(tensors, float("inf"))
    nonfinite = ~torch.isfinite(torch.stack([m.to(dtype) for m in maxes])).all()
    found_inf.copy_(torch.where(nonfinite, torch.ones_like(found_inf), found_inf))
    factor = inv_scale.reshape(()).abs().to(dtype)
    norms = [n.to(dtype) * factor for n in norms]
    per = torch.stack(norms) if per_tensor else norms[0].new_empty(0)
    return combine(norms, p, dtype), per
