"""Bad input gets a clear error and loses nothing: after every rejected call each gradient (and
found_inf) is bitwise what it was. The bad item is put last, so a kernel that wrote before
checking would be caught."""
import math
from types import SimpleNamespace

import pytest
import torch

import mopt_fast

from helpers import device_of


def fresh_grads(dev):
    gen = torch.Generator().manual_seed(61)
    return [torch.randn(5000, generator=gen).to(dev) * 10,
            torch.randn(64, 70, generator=gen).to(torch.float16).to(dev).t(),
            torch.randn(300, generator=gen).to(torch.bfloat16).to(dev)]


def holders(tensors):
    return [SimpleNamespace(grad=t) for t in tensors]


def amp_scalars(dev):
    return torch.full((1,), 0.5, device=dev), torch.zeros(1, device=dev)


CALLS = {
    "get_total_norm": lambda ts, dev: mopt_fast.get_total_norm(ts),
    "clip_grad_norm_": lambda ts, dev: mopt_fast.clip_grad_norm_(holders(ts), 0.1),
    "clip_grads_with_norm_": lambda ts, dev: mopt_fast.clip_grads_with_norm_(holders(ts), 0.1, torch.tensor(100.0, device=dev)),
    "clip_grad_value_": lambda ts, dev: mopt_fast.clip_grad_value_(holders(ts), 0.1),
    "scale_grads_": lambda ts, dev: mopt_fast.scale_grads_(holders(ts), 0.5),
    "zero_grad_": lambda ts, dev: mopt_fast.zero_grad_(holders(ts), set_to_none=False),
    "unscale_grads_": lambda ts, dev: mopt_fast.unscale_grads_(holders(ts), *amp_scalars(dev)),
    "unscale_clip_grad_norm_": lambda ts, dev: mopt_fast.unscale_clip_grad_norm_(holders(ts), 0.1, *amp_scalars(dev)),
}

BAD_TENSORS = {
    "int64": (lambda dev: torch.arange(10, device=dev), TypeError, "dtype"),
    "complex": (lambda dev: torch.randn(10, dtype=torch.complex64, device=dev), TypeError, "dtype"),
    "sparse": (lambda dev: torch.randn(10, device=dev).to_sparse(), ValueError, "sparse"),
}


def assert_unchanged(tensors, before):
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("bad", sorted(BAD_TENSORS))
def test_bad_tensor_rejected_and_nothing_written(backend, call, bad):
    dev = device_of(backend)
    make, exc, match = BAD_TENSORS[bad]
    if call == "zero_grad_" and bad == "sparse":
        pytest.skip("zero_grad_ zeroes sparse gradients with torch, as Optimizer.zero_grad does")
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    with pytest.raises(exc, match=match):
        CALLS[call](grads + [make(dev)], dev)
    assert_unchanged(grads, before)


@pytest.mark.parametrize("value", [-1.0, math.nan])
@pytest.mark.parametrize("call", ["clip_grad_norm_", "clip_grads_with_norm_", "unscale_clip_grad_norm_", "clip_grad_value_"])
def test_negative_or_nan_limit(backend, call, value):
    dev = device_of(backend)
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    inv, found = amp_scalars(dev)
    fn = {
        "clip_grad_norm_": lambda: mopt_fast.clip_grad_norm_(holders(grads), value),
        "clip_grads_with_norm_": lambda: mopt_fast.clip_grads_with_norm_(holders(grads), value, torch.tensor(1.0)),
        "unscale_clip_grad_norm_": lambda: mopt_fast.unscale_clip_grad_norm_(holders(grads), value, inv, found),
        "clip_grad_value_": lambda: mopt_fast.clip_grad_value_(holders(grads), value),
    }[call]
    with pytest.raises(ValueError, match="non-negative"):
        fn()
    assert_unchanged(grads, before)
    assert found.item() == 0.0


@pytest.mark.parametrize("p", [0.0, -2.0, math.nan, -math.inf])
def test_bad_norm_type(backend, p):
    dev = device_of(backend)
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    with pytest.raises(ValueError, match="norm_type"):
        mopt_fast.clip_grad_norm_(holders(grads), 1.0, norm_type=p)
    with pytest.raises(ValueError, match="norm_type"):
        mopt_fast.get_total_norm(grads, p)
    assert_unchanged(grads, before)


def test_error_if_nonfinite_leaves_grads(backend):
    dev = device_of(backend)
    grads = fresh_grads(dev)
    grads[0][7] = math.inf
    before = [g.clone() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        mopt_fast.clip_grad_norm_(holders(grads), 0.1, error_if_nonfinite=True)
    assert_unchanged(grads, before)
    inv, found = amp_scalars(dev)
    with pytest.raises(RuntimeError, match="non-finite"):
        mopt_fast.unscale_clip_grad_norm_(holders(grads), 0.1, inv, found, error_if_nonfinite=True)
    assert_unchanged(grads, before)


@pytest.mark.parametrize("which", ["found_inf", "inv_scale"])
@pytest.mark.parametrize("bad", ["float16", "shape", "device"])
def test_bad_amp_scalars(backend, which, bad):
    dev = device_of(backend)
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    good = torch.zeros(1, device=dev)
    wrong = {"float16": torch.zeros(1, dtype=torch.float16, device=dev),
             "shape": torch.zeros(2, device=dev),
             "device": torch.zeros(1, device="meta")}[bad]
    inv, found = (wrong, good) if which == "inv_scale" else (good + 1, wrong)
    with pytest.raises(ValueError, match=which):
        mopt_fast.unscale_clip_grad_norm_(holders(grads), 1.0, inv, found)
    with pytest.raises(ValueError, match=which):
        mopt_fast.unscale_grads_(holders(grads), inv, found)
    assert_unchanged(grads, before)


def test_device_mix_that_cannot_be_grouped():
    # One found_inf cannot serve gradients on two devices.
    grads = fresh_grads("cpu") + [torch.randn(10, device="meta")]
    before = [g.clone() for g in grads[:-1]]
    inv, found = amp_scalars("cpu")
    with pytest.raises(ValueError, match="cannot be grouped"):
        mopt_fast.unscale_clip_grad_norm_(holders(grads), 1.0, inv, found)
    assert_unchanged(grads[:-1], before)


def test_multi_device_list_is_checked_before_any_group_is_written():
    grads = fresh_grads("cpu")
    before = [g.clone() for g in grads]
    mixed = grads + [torch.randn(10, device="meta"), torch.arange(3, device="meta")]
    with pytest.raises(TypeError, match="dtype"):
        mopt_fast.clip_grad_value_(holders(mixed), 0.01)
    assert_unchanged(grads, before)


def test_non_tensor_items():
    with pytest.raises(TypeError, match="item 2 is float, not a Tensor"):
        mopt_fast.get_total_norm([torch.randn(3), torch.randn(2, device="meta"), 3.0])
    with pytest.raises(TypeError, match="must be a Tensor"):
        mopt_fast.clip_grads_with_norm_([], 1.0, 3.0)


def test_unknown_backend():
    with pytest.raises(RuntimeError, match="unknown backend"):
        with mopt_fast.use_backend("nope"):
            pass


@pytest.mark.parametrize("call", ["clip_grad_norm_", "clip_grad_value_", "scale_grads_", "zero_grad_", "unscale_grads_"])
def test_expanded_gradient_rejected_and_nothing_written(backend, call):
    # An expanded tensor's elements share memory: in-place results could not be written back.
    dev = device_of(backend)
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    expanded = torch.randn(1, 64, device=dev).expand(32, 64)
    with pytest.raises((ValueError, RuntimeError), match="share memory|single memory location"):
        CALLS[call](grads + [expanded], dev)
    assert_unchanged(grads, before)


@pytest.mark.parametrize("item", ["x", 1.5, None], ids=["str", "float", "None"])
@pytest.mark.parametrize("position", ["first", "last"])
def test_a_non_tensor_among_the_tensors_is_a_type_error_naming_it(backend, item, position):
    # torch's get_total_norm raises too (a TypeError, or an AttributeError when the item comes
    # first); ours names the item's position and type on every backend, before anything runs.
    dev = device_of(backend)
    grads = fresh_grads(dev)
    before = [g.clone() for g in grads]
    tensors = [item, *grads] if position == "first" else [*grads, item]
    index = 0 if position == "first" else len(grads)
    with pytest.raises((TypeError, AttributeError, RuntimeError)):
        torch.nn.utils.get_total_norm(tensors)
    with pytest.raises(TypeError, match=f"item {index} is {type(item).__name__}, not a Tensor"):
        mopt_fast.get_total_norm(tensors)
    assert_unchanged(grads, before)


@pytest.mark.parametrize("call", ["unscale_grads_", "unscale_clip_grad_norm_"])
@pytest.mark.parametrize("sparse_first", [True, False])
@pytest.mark.parametrize("scalars_on", ["cpu", "meta"])
def test_a_sparse_gradient_among_meta_ones_gets_the_sparse_error(backend, call, sparse_first, scalars_on):
    # The dispatcher combines a sparse CPU tensor with meta ones into a key no kernel serves
    # ('SparseMeta'); the AMP calls must give the sparse-gradient error the other ops give, and
    # change nothing (found_inf included).
    dev = device_of(backend)
    sparse = torch.randn(10, device=dev).to_sparse()
    metas = [torch.randn(7, device="meta"), torch.randn(3, 4, device="meta")]
    grads = [sparse, *metas] if sparse_first else [*metas, sparse]
    dense_before = sparse.to_dense().clone()
    inv, found = (torch.full((1,), 0.5, device=scalars_on), torch.zeros(1, device=scalars_on))
    fn = {"unscale_grads_": lambda: mopt_fast.unscale_grads_(holders(grads), inv, found),
          "unscale_clip_grad_norm_": lambda: mopt_fast.unscale_clip_grad_norm_(holders(grads), 0.1, inv, found)}[call]
    index = 0 if sparse_first else len(metas)
    with pytest.raises(ValueError, match=f"tensor {index} has layout torch.sparse_coo; only dense"):
        fn()
    assert torch.equal(sparse.to_dense(), dense_before)
    if scalars_on == "cpu":
        assert found.item() == 0.0
