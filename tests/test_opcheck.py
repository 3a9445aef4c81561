"""torch.library.opcheck for every compiled op, on every device the machine has: schema
(declared mutation only), fake kernels, autograd registration, and AOT dispatch with dynamic
shapes (what torch.compile relies on). Both registered namespaces: the C++ ops
(torch.ops.mopt_fast) and the Triton ones (torch.ops.mopt_fast_triton). Cases where inputs require
grad check that the Autograd kernels keep the ops out of autograd."""
import pytest
import torch

from mopt_fast.registry import OPS

from helpers import skip_unless_available


def grads(seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    out = [torch.randn(1000, generator=gen), torch.randn(70, 3, generator=gen).half(),
           torch.randn(5, generator=gen).to(torch.bfloat16)]
    return [t.requires_grad_() for t in out] if requires_grad else out


def amp():
    return torch.full((1,), 0.25), torch.zeros(1)


CASES = {
    "norm": [lambda: (grads(1), 2.0, True), lambda: (grads(2), float("inf"), False), lambda: (grads(3), 1.5, True),
             lambda: (grads(11, requires_grad=True), 2.0, True)],
    "unscale_norm": [lambda: (grads(4), *amp(), 2.0, True), lambda: (grads(12, requires_grad=True), *amp(), 2.0, False)],
    "scale_inplace": [
        lambda: (grads(5), torch.tensor(0.5), None, 0.0, None),
        lambda: (grads(6), torch.full((1,), 0.5), torch.tensor(100.0), 1.0, torch.zeros(1)),
        lambda: (grads(7), None, torch.tensor(100.0), 1.0, None),
    ],
    "clamp_inplace": [lambda: (grads(8), 0.3)],
    "zero_inplace": [lambda: (grads(9),)],
    "unscale_inplace": [lambda: (grads(10), torch.zeros(1), torch.full((1,), 0.25))],
    "unscale_clip_inplace": [lambda: (grads(13), *amp(), 1.0, 2.0), lambda: (grads(14), *amp(), 1e9, float("inf"))],
}


def test_every_op_has_cases():
    assert set(CASES) == set(OPS)


def to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.detach().to(device).requires_grad_(value.requires_grad)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value


def targets():
    """(namespace, backend, device) for every compiled backend and device the machine has."""
    out = [("mopt_fast", "cpu", "cpu"), ("mopt_fast", "cuda", "cuda")]
    out += [("mopt_fast_triton", "triton", "cuda" if torch.cuda.is_available() else "cpu")]
    return out


@pytest.mark.parametrize("namespace,backend,device", targets(), ids=lambda v: str(v))
@pytest.mark.parametrize("op,case", [(op, i) for op, cases in CASES.items() for i in range(len(cases))])
def test_opcheck(namespace, backend, device, op, case):
    skip_unless_available(backend)
    if namespace == "mopt_fast_triton":
        from mopt_fast import triton_kernels  # noqa: F401  (registers the namespace)
    args = to_device(CASES[op][case](), device)
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), op).default, args)
