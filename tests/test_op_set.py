"""The op set is declared once, in mopt_fast/ops.h: the C++ build includes it, and mopt_fast/_ops.py
reads it as text. Python reads what the C++ compiler sees (the compiled schemas are the parsed
ones, and the compiled library defines no op the header does not), every op exists on every
backend with its fake kernel, and the constants every backend shares (csrc/common.h) are the same
in C++ and Python."""
from __future__ import annotations

import pytest
import torch

import mopt_fast
from mopt_fast import _extension, _ops, torch_ops
from mopt_fast.registry import OPS, unavailable_reason

NAMES = [spec.name for spec in _ops.OPS]


def test_registry_table_is_the_declared_op_set():
    assert list(OPS) == NAMES
    assert all(OPS[name] is getattr(torch_ops, name) for name in NAMES)


def compiled_namespaces():
    out = []
    if _extension.COMPILED:
        out.append(("mopt_fast", ["CPU", "CUDA"] if _extension.WITH_CUDA else ["CPU"]))
    if unavailable_reason("triton") is None:
        from mopt_fast import triton_kernels  # noqa: F401  (registers the namespace)

        out.append(("mopt_fast_triton", ["CPU", "CUDA"]))
    return out


@pytest.mark.parametrize("spec", _ops.OPS, ids=lambda s: s.name)
def test_every_op_exists_on_every_backend_with_the_declared_schema(spec):
    assert callable(getattr(torch_ops, spec.name))
    namespaces = compiled_namespaces()
    if not namespaces:
        pytest.skip("no compiled backend here")
    for ns, keys in namespaces:
        qualname = f"{ns}::{spec.name}"
        overload = getattr(getattr(torch.ops, ns), spec.name).default
        assert str(overload._schema) == qualname + spec.schema
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), (qualname, key)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta"), f"{qualname}: no fake kernel"


def test_compiled_namespaces_define_exactly_the_declared_ops():
    """No op of a compiled library is missing from the parsed header (e.g. an entry the parser
    skipped), and none is left over."""
    namespaces = compiled_namespaces()
    if not namespaces:
        pytest.skip("no compiled backend here")
    registered = torch._C._dispatch_get_all_op_names()
    for ns, _ in namespaces:
        assert sorted(n.split("::", 1)[1] for n in registered if n.startswith(ns + "::")) == sorted(NAMES), ns


def test_op_set_parser_reads_the_header_as_the_compiler_does():
    text = """// X(commented_out, "() -> ()")
#define MOPT_FAST_OPS(X)                                   \\
  /* an op: X(also_commented_out, "() -> ()") */           \\
  X(first, "(Tensor[] tensors) -> ()")                     \\
  X(second,                                                \\
    "(Tensor(a!)[] tensors, "                              \\
    "float value) -> Tensor")
"""
    assert _ops.parse_op_set(text) == {
        "first": "(Tensor[] tensors) -> ()",
        "second": "(Tensor(a!)[] tensors, float value) -> Tensor",
    }
    assert _ops.parse_op_set(_ops.OP_SET_HEADER.read_text()) == {spec.name: spec.schema for spec in _ops.OPS}
    with pytest.raises(ValueError, match="not of the form"):
        _ops.parse_op_set('#define MOPT_FAST_OPS(X) X(first, "() -> ()") X(second, SCHEMA)')
    with pytest.raises(ValueError, match="declared twice"):
        _ops.parse_op_set('#define MOPT_FAST_OPS(X) X(first, "() -> ()") X(first, "() -> ()")')


def test_every_op_returning_tensors_has_its_own_fake_kernel():
    for spec in _ops.OPS:
        assert (spec.fake is _ops._fake_writes_only) == spec.schema.endswith("-> ()"), spec.name


def test_triton_table_is_the_declared_op_set():
    if unavailable_reason("triton") is not None:
        pytest.skip(unavailable_reason("triton"))
    from mopt_fast import triton_kernels

    assert list(triton_kernels.OPS) == NAMES == list(triton_kernels.KERNELS)


def test_fake_kernels_give_the_real_shapes_and_dtypes():
    """Each op on fake tensors (what torch.compile traces) against the same op run for real."""
    if not _extension.COMPILED:
        pytest.skip("needs the compiled ops")
    from torch._subclasses.fake_tensor import FakeTensorMode

    def args(op, tensors):
        amp = (torch.full((1,), 0.5), torch.zeros(1))
        return {
            "norm": (tensors, 2.0, True),
            "unscale_norm": (tensors, *amp, 2.0, True),
            "scale_inplace": (tensors, torch.tensor(0.5), None, 0.0, None),
            "clamp_inplace": (tensors, 0.3),
            "zero_inplace": (tensors,),
            "unscale_inplace": (tensors, amp[1], amp[0]),
            "unscale_clip_inplace": (tensors, *amp, 1.0, 2.0),
        }[op]

    for name in NAMES:
        op = getattr(torch.ops.mopt_fast, name).default
        real = op(*args(name, [torch.randn(10), torch.randn(3, dtype=torch.float64)]))
        with FakeTensorMode() as mode:
            fake = op(*args(name, [mode.from_tensor(torch.randn(10)), mode.from_tensor(torch.randn(3).double())]))
        flat_real = real if isinstance(real, tuple) else (real,) if real is not None else ()
        flat_fake = fake if isinstance(fake, tuple) else (fake,) if fake is not None else ()
        assert [(t.shape, t.dtype) for t in flat_real] == [(t.shape, t.dtype) for t in flat_fake], name


def test_shared_constants_agree_between_cpp_and_python():
    if not _extension.COMPILED:
        pytest.skip("needs the compiled extension")
    from mopt_fast import _C

    assert _C.chunk_elems == _ops.CHUNK_ELEMS
    assert (_C.norm_kind_l2, _C.norm_kind_l1, _C.norm_kind_linf, _C.norm_kind_lp) == tuple(_ops.NormKind)
    assert [_ops.norm_kind(p) for p in (2.0, 1.0, float("inf"), 3.0, 0.5)] == [
        _ops.NormKind.L2, _ops.NormKind.L1, _ops.NormKind.LINF, _ops.NormKind.LP, _ops.NormKind.LP]


def test_functional_api_covers_every_op():
    """Each op is reached through the public functions (none is dead weight)."""
    import inspect

    source = inspect.getsource(mopt_fast.functional)
    for name in NAMES:
        assert f'"{name}"' in source, name
