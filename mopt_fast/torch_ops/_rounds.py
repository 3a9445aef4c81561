from __future__ import annotations

from collections.abc import Callable

import torch

from mopt_fast import _autograd, _validate


def write_in_rounds(write: Callable[[list[torch.Tensor]], None], tensors: list[torch.Tensor]) -> None:
    """write(tensors) for an in-place op of the torch backend, made to behave as the compiled ops do:

    - an inference tensor outside inference mode is refused before anything is written (torch's
      foreach ops raise only after writing);
    - a list whose tensors share memory is written one round of disjoint tensors after another,
      in list order (see _validate.disjoint_rounds): torch's foreach kernels on CUDA may race on
      a tensor listed twice, and torch's own result is that of one entry after the other.
    """
    if not torch.is_inference_mode_enabled() and any(t.is_inference() for t in tensors):
        raise RuntimeError(_autograd.INFERENCE_UPDATE)
    rounds = _validate.disjoint_rounds(tensors)
    if rounds is None:
        write(tensors)
        return
    for members in rounds:
        write([tensors[i] for i in members])
