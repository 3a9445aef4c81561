"""The pure-torch backend: one module per op, each with the signature of its custom op in
mopt_fast/ops.h. It runs wherever torch runs (any device, no build), and it is the behaviour
the compiled backends are checked against, next to the float64 reference in the tests.
"""
from mopt_fast.torch_ops.clamp import clamp_inplace
from mopt_fast.torch_ops.norm import norm
from mopt_fast.torch_ops.scale import scale_inplace
from mopt_fast.torch_ops.unscale import unscale_inplace
from mopt_fast.torch_ops.unscale_clip import unscale_clip_inplace
from mopt_fast.torch_ops.unscale_norm import unscale_norm
from mopt_fast.torch_ops.zero import zero_inplace

__all__ = [
    "clamp_inplace", "norm", "scale_inplace", "unscale_clip_inplace", "unscale_inplace", "unscale_norm", "zero_inplace",
]
