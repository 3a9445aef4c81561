"""Gradient sets for the benchmarks, and the bytes each op must move over them."""
from __future__ import annotations

import torch

GPT2_SMALL_LAYERS = 12
D = 768


def gpt2_124m_shapes() -> list[tuple[int, ...]]:
    """The 148 parameter shapes of GPT-2 small (124M parameters, lm_head tied to wte)."""
    shapes: list[tuple[int, ...]] = [(50257, D), (1024, D)]
    for _ in range(GPT2_SMALL_LAYERS):
        shapes += [(D,), (D,),  # ln_1
                   (D, 3 * D), (3 * D,),  # attn.c_attn
                   (D, D), (D,),  # attn.c_proj
                   (D,), (D,),  # ln_2
                   (D, 4 * D), (4 * D,),  # mlp.c_fc
                   (4 * D, D), (D,)]  # mlp.c_proj
    shapes += [(D,), (D,)]  # ln_f
    return shapes


def gpt_1b_shapes() -> list[tuple[int, ...]]:
    """A GPT-style model of about 1.1B parameters (d=2048, 20 layers, 50257-token vocabulary),
    for the GPU runs only."""
    d = 2048
    shapes: list[tuple[int, ...]] = [(50257, d), (2048, d)]
    for _ in range(20):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


SETS = {
    "gpt2_124m": gpt2_124m_shapes,
    "many_small": lambda: [(4096,)] * 1000,
    "large": lambda: [(4 * 1024 * 1024,)] * 10,
}

# Passes over the gradient bytes each op must make at the least: reads + writes.
PASSES = {
    "norm": 1,          # read
    "clip_norm": 3,     # read for the norm, then read + write to scale
    "clip_value": 2,    # read + write
    "scale": 2,
    "zero": 1,          # write
    "unscale": 2,
    "amp_pipeline": 3,  # fused read pass (unscale + inf check + norm), then one scaling pass
    "roofline": 3,      # one read pass + one in-place pass over one flat buffer
}


GPU_SETS = {**SETS, "gpt_1b": gpt_1b_shapes}


def make_params(set_name: str, dtype: torch.dtype, seed: int = 0, device: str = "cpu") -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in GPU_SETS[set_name]():
        p = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=True)
        p.grad = torch.randn(shape, generator=gen, device=device).to(dtype)
        params.append(p)
    return params


def numel(params) -> int:
    return sum(p.numel() for p in params)
