"""Fake (meta) kernels of the compiled ops, so torch.compile and FakeTensor tracing know the
output shapes without running anything. Registered only when the compiled ops exist."""
from __future__ import annotations

import torch


def _result_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _norm_outputs(tensors: list[torch.Tensor], per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _result_dtype(tensors)
    first = tensors[0]
    return (
        first.new_empty((), dtype=dtype),
        first.new_empty((len(tensors) if per_tensor else 0,), dtype=dtype),
    )


def register() -> None:
    @torch.library.register_fake("mopt_fast::norm")
    def _norm(tensors, norm_type, per_tensor):
        return _norm_outputs(tensors, per_tensor)

    @torch.library.register_fake("mopt_fast::unscale_norm")
    def _unscale_norm(tensors, inv_scale, found_inf, norm_type, per_tensor):
        return _norm_outputs(tensors, per_tensor)

    @torch.library.register_fake("mopt_fast::scale_inplace")
    def _scale_inplace(tensors, scale, total_norm, max_norm, found_inf):
        return None

    @torch.library.register_fake("mopt_fast::clamp_inplace")
    def _clamp_inplace(tensors, clip_value):
        return None

    @torch.library.register_fake("mopt_fast::zero_inplace")
    def _zero_inplace(tensors):
        return None

    @torch.library.register_fake("mopt_fast::unscale_inplace")
    def _unscale_inplace(tensors, found_inf, inv_scale):
        return None
