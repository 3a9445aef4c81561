"""mopt_fast's own WeightAveraging, EMAWeightAveraging, StochasticWeightAveraging, DeviceStatsMonitor,
ModelPruning, SpikeDetection and ThroughputMonitor, side by side with Lightning 2.6's.

Each case runs the same seeded module three ways: mopt_fast's callback in mopt_fast.Trainer ("ours"),
Lightning's callback in Lightning's Trainer ("lightning") and, where cheap, Lightning's callback in
mopt_fast.Trainer ("lightning_in_ours"); the weights must be bitwise equal, and the logged values, the
callback's state, the checkpoint entries it writes and the errors it raises the same.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from callback_helpers import plain, recorder_class
from torch import nn

import mopt_fast
import mopt_fast.callbacks as ours_callbacks
from mopt_fast.callbacks import throughput_monitor as ours_throughput

import lightning_cases as cases
from helpers import importorskip_unless_ci

pl = importorskip_unless_ci("lightning.pytorch")
from lightning.fabric.utilities import throughput as fabric_throughput  # noqa: E402
from lightning.pytorch.callbacks import throughput_monitor as pl_throughput_monitor  # noqa: E402

KINDS = ("lightning", "ours", "lightning_in_ours")


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: the batch-norm cases take seconds on a busy machine with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECORDERS = {"lightning": recorder_class(pl.loggers.Logger), "ours": recorder_class(mopt_fast.loggers.Logger)}


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for k in a:
        if isinstance(a[k], torch.Tensor):  # bitwise, NaN equal to NaN
            assert a[k].dtype == b[k].dtype and torch.allclose(a[k], b[k], rtol=0, atol=0, equal_nan=True), k
        else:
            assert a[k] == b[k], k


def frameworks(kind: str) -> tuple[type, type, Any, str]:
    """(LightningModule, Trainer, the callbacks module, the logger's framework) of `kind`."""
    LM, Trainer = cases.frameworks("lightning" if kind == "lightning" else "mopt_fast")
    return LM, Trainer, ours_callbacks if kind == "ours" else pl.callbacks, "ours" if kind == "ours" else "lightning"


# -- the modules -----------------------------------------------------------------------------------
AUTOMATIC = cases.automatic()


def with_batchnorm(LM: type) -> type:
    class Normalized(cases.automatic(scheduler="epoch")(LM)):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))

    return Normalized


def with_test_and_predict(LM: type) -> type:
    class Full(cases.automatic()(LM)):
        flops_per_batch = 1234

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", self.compute_loss(batch))

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0])

    return Full


def spiking(value: float, at_step: int = 9) -> Callable[[type], type]:
    """The loss times `value` at global step `at_step` (a spike, or NaN / inf)."""
    def make(LM: type) -> type:
        class Spiking(cases.automatic()(LM)):
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                loss = self.compute_loss(batch)
                return loss * value if self.global_step == at_step else loss

        return Spiking

    return make


# -- a run -----------------------------------------------------------------------------------------
def run(kind: str, make_callbacks: Callable[[Any], list], case: Callable[[type], type] = AUTOMATIC,
        checkpoints: bool = False, after: Callable[[Any, Any], None] | None = None, ckpt_path: str | None = None,
        root: str | None = None, **trainer_kwargs: Any) -> dict[str, Any]:
    """A fresh seeded module of `case` fitted by `kind`'s Trainer with `make_callbacks(callbacks
    module)` (and, with `checkpoints`, a ModelCheckpoint saving every epoch); `after(trainer,
    model)` runs after the fit. The error, if any, is kept."""
    LM, Trainer, C, logger_kind = frameworks(kind)
    torch.manual_seed(0)
    model = case(LM)()
    callbacks = make_callbacks(C)
    root = root or tempfile.mkdtemp(prefix="mopt_fast_test_")
    recorder = RECORDERS[logger_kind]()
    extra = []
    if checkpoints:
        Checkpoint = ours_callbacks.ModelCheckpoint if kind == "ours" else pl.callbacks.ModelCheckpoint
        extra.append(Checkpoint(dirpath=os.path.join(root, "ckpts"), save_top_k=-1, filename="{epoch}"))
    kwargs: dict[str, Any] = dict(accelerator="cpu", max_epochs=4, logger=recorder, enable_checkpointing=checkpoints,
                                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                                  log_every_n_steps=2)
    kwargs.update(trainer_kwargs)
    trainer = Trainer(callbacks=[*callbacks, *extra], **kwargs)
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        try:
            trainer.fit(model, *cases.make_data(), ckpt_path=ckpt_path)
            if after is not None:
                after(trainer, model)
        except Exception as exc:  # the exception itself is compared
            error = exc
    return {"trainer": trainer, "model": model, "callbacks": callbacks, "root": root, "records": recorder.records,
            "error": error, "warnings": [str(w.message) for w in caught]}


def states_of(r: dict[str, Any]) -> Any:
    """The callbacks' states as JSON, paths relative to the run's folder."""
    return [json.dumps(plain(cb.state_dict()), default=str).replace(r["root"], "<root>") for cb in r["callbacks"]]


def error_of(r: dict[str, Any]) -> Any:
    error = r["error"]
    return None if error is None else (type(error).__name__, str(error).replace(r["root"], "<root>"))


def checkpoint_entries(r: dict[str, Any], keys: tuple[str, ...], state_key: str) -> list[dict[str, Any]]:
    """Of each checkpoint file, in name order: the entries `keys` and the callback's state."""
    folder = os.path.join(r["root"], "ckpts")
    found = []
    for name in sorted(os.listdir(folder)):
        ckpt = torch.load(os.path.join(folder, name), weights_only=False)
        entry = {k: ckpt.get(k) for k in keys}
        entry["callback_state"] = plain(ckpt["callbacks"].get(state_key))
        found.append((name, entry))
    return found


def same_entries(a: list, b: list) -> None:
    assert [n for n, _ in a] == [n for n, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], dict) and x[k] and isinstance(next(iter(x[k].values())), torch.Tensor):
                same_tensors(x[k], y[k])
            else:
                assert plain(x[k]) == plain(y[k]), k


def compare(make_callbacks: Callable[[Any], list], kinds: tuple[str, ...] = KINDS,
            extra: Callable[[dict[str, Any]], Any] = lambda r: None, states: bool = True,
            **kwargs: Any) -> dict[str, dict[str, Any]]:
    """The runs of `kinds`: weights bitwise, logged values, error, the callbacks' states and
    `extra(run)` equal to Lightning's."""
    got = {kind: run(kind, make_callbacks, **kwargs) for kind in kinds}
    reference = got["lightning"]
    for kind, r in got.items():
        same_tensors(reference["model"].state_dict(), r["model"].state_dict())
        assert plain(r["records"]) == plain(reference["records"]), kind
        assert error_of(r) == error_of(reference), kind
        if states:
            assert states_of(r) == states_of(reference), kind
        assert extra(r) == extra(reference), kind
    return got


def errors(make: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The error `make(callbacks module)` raises with mopt_fast's and with Lightning's callbacks."""
    found = []
    for C in (ours_callbacks, pl.callbacks):
        with pytest.raises(Exception) as info:
            make(C)
        found.append((type(info.value).__name__, str(info.value)))
    return found[0], found[1]


# -- WeightAveraging, EMAWeightAveraging ----------------------------------------------------------------
AVERAGING_KEYS = ("state_dict", "current_model_state", "averaging_state", "epoch", "global_step")


@pytest.mark.parametrize("name", ["WeightAveraging", "EMAWeightAveraging"])
def test_weight_averaging(name: str) -> None:
    """The average in validation and at the end; the averaged weights under state_dict in each
    checkpoint, the module's under current_model_state."""
    def make(C: Any) -> list:
        if name == "WeightAveraging":
            return [C.WeightAveraging()]
        return [C.EMAWeightAveraging(decay=0.9, update_starting_at_step=3, update_every_n_steps=2,
                                     update_starting_at_epoch=2)]

    got = compare(make, case=with_test_and_predict, checkpoints=True,
                  extra=lambda r: plain(r["callbacks"][0]._average_model.state_dict()))
    entries = {k: checkpoint_entries(r, AVERAGING_KEYS, name) for k, r in got.items()}
    same_entries(entries["lightning"], entries["ours"])
    same_entries(entries["lightning"], entries["lightning_in_ours"])
    first = entries["lightning"][0][1]
    assert not torch.equal(first["state_dict"]["net.0.weight"], first["current_model_state"]["net.0.weight"])
    assert "val_loss" in {k for _, m in got["lightning"]["records"] for k in m}


# A resumed fit goes on in mopt_fast's order (the RNG as of the epoch's start, see docs/checkpoints.md), not
# Lightning's: the resume cases compare mopt_fast's callback with Lightning's, both in mopt_fast.Trainer.
RESUMED = ("lightning_in_ours", "ours")


def test_weight_averaging_resumes() -> None:
    """A fit resumed from a checkpoint of epoch 0: both models restored, the same end."""
    def resumed(kind: str) -> dict[str, Any]:
        first = run(kind, lambda C: [C.EMAWeightAveraging(decay=0.8)], checkpoints=True, max_epochs=2)
        path = os.path.join(first["root"], "ckpts", "epoch=0.ckpt")
        return run(kind, lambda C: [C.EMAWeightAveraging(decay=0.8)], ckpt_path=path, max_epochs=3)

    got = {kind: resumed(kind) for kind in RESUMED}
    reference, mine = (got[k] for k in RESUMED)
    same_tensors(reference["model"].state_dict(), mine["model"].state_dict())
    same_tensors(reference["callbacks"][0]._average_model.state_dict(), mine["callbacks"][0]._average_model.state_dict())
    assert mine["error"] is None and mine["callbacks"][0].state_dict()["latest_update_step"] == 18
    assert "Found current_model_state" not in mine["warnings"]


def test_weight_averaging_foreign_checkpoint_and_validate() -> None:
    """A checkpoint without the averaging entries initializes both models from its state_dict
    (an average never updated leaves the module at the checkpoint's weights), with Lightning's
    warning; validate loads a checkpoint without an average (another warning)."""
    def run_both(kind: str) -> Any:
        plain_fit = run(kind, lambda C: [], checkpoints=True, max_epochs=1)
        path = os.path.join(plain_fit["root"], "ckpts", "epoch=0.ckpt")
        r = run(kind, lambda C: [C.EMAWeightAveraging(update_starting_at_step=10**6)], ckpt_path=path, max_epochs=2)
        fitted = {k: v.clone() for k, v in r["model"].state_dict().items()}  # validate loads the checkpoint
        LM, Trainer, C, _ = frameworks(kind)
        trainer = Trainer(callbacks=[C.WeightAveraging()], accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, default_root_dir=r["root"])
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            trainer.validate(r["model"], cases.make_data()[1], ckpt_path=path, verbose=False)
        messages = [w for w in r["warnings"] + [str(w.message) for w in caught] if "WeightAveraging" in w]
        return fitted, torch.load(path, weights_only=False)["state_dict"], messages

    (lightning, _, lw), (ours, saved, ow) = run_both("lightning_in_ours"), run_both("ours")
    same_tensors(lightning, ours)
    same_tensors(saved, ours)
    assert ow == lw and any("was not created with WeightAveraging" in w for w in lw)
    assert any("outside the 'fit' stage" in w for w in lw)


# -- StochasticWeightAveraging ------------------------------------------------------------------
SWA_KEYS = ("state_dict", "epoch", "global_step", "lr_schedulers")


@pytest.mark.parametrize("case,kwargs", [
    (with_batchnorm, dict(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)),
    (AUTOMATIC, dict(swa_lrs=[0.03], swa_epoch_start=0.5, annealing_strategy="linear", device=None)),
    (cases.automatic(scheduler="step_interval"), dict(swa_lrs=0.02, swa_epoch_start=3)),
], ids=["batchnorm_and_scheduler", "fraction_start", "step_scheduler"])
def test_stochastic_weight_averaging(case: Callable[[type], type], kwargs: dict[str, Any]) -> None:
    """The learning rates (SWALR in place of the module's scheduler), the batch-norm epoch, the
    averaged weights at the end, the callback's state in each checkpoint."""
    def summary(r: dict[str, Any]) -> Any:
        trainer = r["trainer"]
        swa_warnings = [re.sub(r" at 0x[0-9a-f]+", "", w) for w in r["warnings"] if "SWA" in w]
        return (trainer.current_epoch, trainer.global_step, trainer.max_epochs, trainer.accumulate_grad_batches,
                [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs],
                [g["lr"] for g in trainer.optimizers[0].param_groups], swa_warnings)

    got = compare(lambda C: [C.StochasticWeightAveraging(**kwargs)], case=case, checkpoints=True, extra=summary)
    entries = {k: checkpoint_entries(r, SWA_KEYS, "StochasticWeightAveraging") for k, r in got.items()}
    same_entries(entries["lightning"], entries["ours"])
    same_entries(entries["lightning"], entries["lightning_in_ours"])
    if case is with_batchnorm:
        assert got["lightning"]["trainer"].current_epoch == 5  # one more than max_epochs: the batch-norm epoch
    if kwargs.get("swa_epoch_start") == 3:  # the step-interval scheduler
        assert any("only supported every epoch" in w for w in summary(got["ours"])[-1])


def test_stochastic_weight_averaging_resumes_inside_the_swa_phase() -> None:
    def resumed(kind: str) -> dict[str, Any]:
        make = lambda C: [C.StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2)]  # noqa: E731
        first = run(kind, make, case=with_batchnorm, checkpoints=True, max_epochs=3)
        path = os.path.join(first["root"], "ckpts", "epoch=2.ckpt")
        return run(kind, make, case=with_batchnorm, ckpt_path=path, max_epochs=4)

    got = {kind: resumed(kind) for kind in RESUMED}
    reference, mine = (got[k] for k in RESUMED)
    assert error_of(mine) == error_of(reference)
    same_tensors(reference["model"].state_dict(), mine["model"].state_dict())
    assert plain(mine["callbacks"][0].state_dict()) == plain(reference["callbacks"][0].state_dict())
    assert mine["trainer"].current_epoch == 5


def test_stochastic_weight_averaging_errors() -> None:
    for make in (lambda C: C.StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=1.5),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=-1.0),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=[0.1, 1]),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=1),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=0.1, avg_fn=3),
                 lambda C: C.StochasticWeightAveraging(swa_lrs=0.1, device=1)):
        ours, theirs = errors(make)
        assert ours == theirs
    # at fit start: a float start without an epoch limit
    got = compare(lambda C: [C.StochasticWeightAveraging(swa_lrs=0.1)], kinds=("lightning", "ours"),
                  max_epochs=-1, max_steps=3)
    assert "max_epochs=-1" in got["ours"]["error"].args[0]


# -- SpikeDetection ---------------------------------------------------------------------------------
def spike_file(r: dict[str, Any]) -> Any:
    cb = r["callbacks"][0]
    path = cb.exclude_batches_path
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return os.path.relpath(path, r["root"]), json.load(f)


@pytest.mark.parametrize("value,kwargs,at_step", [
    (100.0, dict(window=4, warmup=2), 9),
    (100.0, dict(window=3, warmup=1, atol=50.0, rtol=None, mode="min"), 9),
    (float("nan"), dict(window=4), 9),
    (float("nan"), dict(window=4, finite_only=False), 9),
    (float("nan"), dict(window=4, warmup=3), 6),
    (0.01, dict(window=4, mode="max", rtol=0.9), 9),
], ids=["spike", "atol", "nan_is_a_spike", "nan_skipped", "nan_in_warmup", "max_mode"])
def test_spike_detection(value: float, kwargs: dict[str, Any], at_step: int) -> None:
    """TrainingSpikeException (class name and message), the batches file, the state; a non-finite
    loss is a spike unless finite_only=False (then it stays out of the running mean); in the
    warmup it goes into the running mean."""
    got = compare(lambda C: [C.SpikeDetection(**kwargs)], case=spiking(value, at_step), extra=spike_file,
                  max_epochs=3)
    error = got["lightning"]["error"]
    if kwargs.get("finite_only") is False:
        assert error is None
    elif at_step == 6:  # the NaN loss at the epoch's first batch, in the warmup; the NaN weights spike at batch 3
        assert type(error).__name__ == "TrainingSpikeException" and spike_file(got["ours"])[1] == [2, 3]
        assert got["ours"]["callbacks"][0].state_dict()["last_val"] != got["ours"]["callbacks"][0].state_dict()[
            "last_val"]  # NaN
    else:
        assert type(error).__name__ == "TrainingSpikeException" and spike_file(got["ours"])[1] == [2, 3]


def test_spike_detection_without_a_loss() -> None:
    def case(LM: type) -> type:
        class ReturnsNone(cases.automatic(returns="none")(LM)):
            pass

        return ReturnsNone

    got = compare(lambda C: [C.SpikeDetection()], case=case, kinds=("lightning", "ours"), max_epochs=1)
    assert type(got["ours"]["error"]) is KeyError  # Lightning passes {} for a step that returned None


def test_spike_detection_resumes() -> None:
    """mopt_fast's SpikeDetection takes its state back from a checkpoint. Lightning 2.6's raises
    AttributeError there (its load_state_dict reads a ``running`` attribute it never sets): a
    deliberate difference, checked here so that a Lightning fix shows."""
    got = {}
    for kind in ("lightning", "ours"):
        first = run(kind, lambda C: [C.SpikeDetection(window=3, rtol=5.0)], checkpoints=True, max_epochs=2)
        path = os.path.join(first["root"], "ckpts", "epoch=0.ckpt")
        got[kind] = run(kind, lambda C: [C.SpikeDetection(window=3, rtol=1.0)], ckpt_path=path, max_epochs=2)
    assert "has no attribute 'running'" in str(got["lightning"]["error"])
    assert got["ours"]["error"] is None and got["ours"]["callbacks"][0].rtol == 5.0  # the checkpoint's


# -- DeviceStatsMonitor ---------------------------------------------------------------------------------
def test_device_stats_monitor_on_the_cpu(monkeypatch) -> None:
    """cpu_stats=False logs nothing; None and True need psutil: Lightning's errors (at setup, at the
    first logging step) when it is missing, the same keys and values when it is there (psutil's
    readings pinned: the machine's load differs from one run to the next)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        monkeypatch.setattr(psutil, "cpu_percent", lambda *a, **k: 37.5)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(percent=41.0))
        monkeypatch.setattr(psutil, "swap_memory", lambda: types.SimpleNamespace(percent=3.0))
    compare(lambda C: [C.DeviceStatsMonitor(cpu_stats=False)], max_epochs=1)
    for cpu_stats in (None, True):
        # (no sanity check: the first logging step is then after the first optimizer step)
        got = compare(lambda C, cpu_stats=cpu_stats: [C.DeviceStatsMonitor(cpu_stats=cpu_stats)],
                      kinds=("lightning", "ours"), max_epochs=1, num_sanity_val_steps=0,
                      extra=lambda r: (r["trainer"].global_step, sorted({k for _, m in r["records"] for k in m})))
        error = got["ours"]["error"]
        assert isinstance(error, ModuleNotFoundError) or any("cpu_percent" in k for _, m in got["ours"]["records"]
                                                             for k in m)
    got = compare(lambda C: [C.DeviceStatsMonitor()], kinds=("lightning", "ours"), logger=False, max_epochs=1)
    assert "logger=False" in str(got["ours"]["error"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA statistics need a GPU")
def test_device_stats_monitor_on_cuda() -> None:
    """The same keys at the same steps (the values are the allocator's, run to run)."""
    def keys(r: dict[str, Any]) -> Any:
        return [(step, sorted(m)) for step, m in r["records"]]

    runs = {kind: run(kind, lambda C: [C.DeviceStatsMonitor(cpu_stats=False)], accelerator="cuda", max_epochs=1)
            for kind in ("lightning", "ours")}
    assert keys(runs["ours"]) == keys(runs["lightning"])
    assert any(k.startswith("DeviceStatsMonitor.on_train_batch_end/allocated_bytes") for _, m in
               runs["ours"]["records"] for k in m)


# -- ModelPruning -----------------------------------------------------------------------------------
def prune_summary(r: dict[str, Any]) -> Any:
    model = r["model"]
    return sorted(n for n, _ in model.named_buffers()), sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize("kwargs", [
    dict(pruning_fn="l1_unstructured", amount=0.3, verbose=2),
    dict(pruning_fn="random_unstructured", amount=lambda epoch: [0, 0.2, 0.5, 0.1][epoch], parameter_names=["weight"],
         use_lottery_ticket_hypothesis=lambda epoch: epoch % 2 == 1, make_pruning_permanent=False),
    dict(pruning_fn="ln_structured", pruning_dim=0, pruning_norm=2, use_global_unstructured=False, amount=2,
         apply_pruning=lambda epoch: epoch >= 1, resample_parameters=True, prune_on_train_epoch_end=False),
], ids=["global_l1", "schedule_not_permanent", "local_structured"])
def test_model_pruning(kwargs: dict[str, Any]) -> None:
    """The masks, their schedules, the lottery ticket, the permanent pruning at the end and in
    every checkpoint's state_dict."""
    got = compare(lambda C: [C.ModelPruning(**kwargs)], checkpoints=True, extra=prune_summary)
    entries = {k: checkpoint_entries(r, ("state_dict",), "ModelPruning") for k, r in got.items()}
    same_entries(entries["lightning"], entries["ours"])
    same_entries(entries["lightning"], entries["lightning_in_ours"])
    weights = got["ours"]["model"].net[0].weight
    assert (weights == 0).any()
    if kwargs["pruning_fn"] != "ln_structured":  # (a pruning container stays, as in Lightning)
        assert ("net.0.weight_mask" in prune_summary(got["ours"])[0]) is (kwargs.get("make_pruning_permanent") is False)


def test_model_pruning_custom_method_and_filter() -> None:
    class HalfOfIt(torch.nn.utils.prune.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def __init__(self, amount: float) -> None:
            self.amount = amount

        def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    def make(C: Any) -> list:
        class LastLayerOnly(C.ModelPruning):
            def filter_parameters_to_prune(self, parameters_to_prune: Any = ()) -> Any:
                return [(m, n) for m, n in parameters_to_prune if m.out_features == 1]

        return [LastLayerOnly(HalfOfIt, amount=0.5)]

    compare(make, extra=prune_summary, max_epochs=2)


def test_model_pruning_errors() -> None:
    layer, instance = nn.Linear(2, 2), torch.nn.utils.prune.L1Unstructured(0.1)
    for make in (lambda C: C.ModelPruning("l1_unstructured", parameter_names=["gamma"]),
                 lambda C: C.ModelPruning("l3_unstructured"),
                 lambda C: C.ModelPruning("random_structured"),
                 lambda C: C.ModelPruning("ln_structured", pruning_dim=0, use_global_unstructured=False),
                 lambda C: C.ModelPruning("ln_structured", pruning_dim=0, pruning_norm=1),
                 lambda C: C.ModelPruning(torch.nn.utils.prune.L1Unstructured, use_global_unstructured=False),
                 lambda C: C.ModelPruning(instance),
                 lambda C: C.ModelPruning("l1_unstructured", amount="half"),
                 lambda C: C.ModelPruning("l1_unstructured", verbose=3),
                 lambda C: C.ModelPruning.sanitize_parameters_to_prune(nn.Sequential(nn.Linear(2, 2)), [(layer, "w")]),
                 lambda C: C.ModelPruning.sanitize_parameters_to_prune(nn.Sequential(nn.Linear(2, 2)), [layer])):
        ours, theirs = errors(make)
        assert ours == theirs


# -- ThroughputMonitor --------------------------------------------------------------------------------
class TickingClock:
    """``time.perf_counter`` that advances by 0.25 s at every read: the rates become deterministic."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        self.now += 0.25
        return self.now


@contextlib.contextmanager
def ticking_clock(module: Any) -> Any:
    original = module.time
    module.time = types.SimpleNamespace(perf_counter=TickingClock().perf_counter)
    try:
        yield
    finally:
        module.time = original


def test_throughput_monitor() -> None:
    """Every logged value, rates included (a clock that ticks the same in both), for the fit with
    validation and gradient accumulation, then test and predict."""
    def after(trainer: Any, model: Any) -> None:
        _, val = cases.make_data()
        trainer.test(model, val, verbose=False)
        trainer.predict(model, val, return_predictions=False)

    def make(C: Any) -> list:
        return [C.ThroughputMonitor(batch_size_fn=lambda batch: batch[0].shape[0],
                                    length_fn=lambda batch: 3 * batch[0].shape[0], window_size=3)]

    got = {}
    for kind in KINDS:
        module = ours_throughput if kind == "ours" else pl_throughput_monitor
        with ticking_clock(module):
            got[kind] = run(kind, make, case=with_test_and_predict, after=after, max_epochs=2,
                            accumulate_grad_batches=2)
    for kind in ("ours", "lightning_in_ours"):
        assert got[kind]["error"] is None and got[kind]["records"] == got["lightning"]["records"], kind
    keys = {k for _, m in got["ours"]["records"] for k in m}
    assert {"train/device/flops_per_sec", "train/device/items_per_sec", "validate/samples", "test/lengths",
            "predict/batches"} <= keys
    assert "train/device/mfu" not in keys  # no FLOPs figures for a CPU


def test_throughput_monitor_warns_without_flops() -> None:
    got = {kind: run(kind, lambda C: [C.ThroughputMonitor(batch_size_fn=len)], max_epochs=1)
           for kind in ("lightning", "ours")}
    assert [w for w in got["ours"]["warnings"] if "ThroughputMonitor" in w] == [
        w for w in got["lightning"]["warnings"] if "ThroughputMonitor" in w] != []


def test_throughput_and_measure_flops() -> None:
    """Throughput (with several devices, the global rates too) and its errors, measure_flops,
    get_available_flops on the CPU: the same as Lightning's."""
    for kwargs in (dict(available_flops=1e12, world_size=2, window_size=3), dict(window_size=2, separator=".")):
        ours, theirs = ours_throughput.Throughput(**kwargs), fabric_throughput.Throughput(**kwargs)
        for i in range(1, 6):
            for t in (ours, theirs):
                t.update(time=i * 0.5 + i * i * 0.01, batches=i, samples=4 * i, lengths=12 * i, flops=1000 * i)
            assert ours.compute() == theirs.compute()
    for bad in (dict(time=0.1, batches=2, samples=1), dict(time=0.1, batches=1, samples=2, lengths=1)):
        found = []
        for t in (ours_throughput.Throughput(), fabric_throughput.Throughput()):
            with pytest.raises(ValueError) as info:
                t.update(**bad)
            found.append(str(info.value))
        assert found[0] == found[1]
    found = []
    for t in (ours_throughput.Throughput(), fabric_throughput.Throughput()):
        t.update(time=1.0, batches=1, samples=1)
        with pytest.raises(ValueError) as info:
            t.update(time=0.5, batches=2, samples=2)
        found.append(str(info.value))
    assert found[0] == found[1]

    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(4, 8)
    for loss_fn in (None, torch.Tensor.sum):
        assert ours_throughput.measure_flops(model, lambda: model(x), loss_fn) == fabric_throughput.measure_flops(
            model, lambda: model(x), loss_fn) > 0
    assert ours_throughput.get_available_flops(torch.device("cpu"), torch.float32) is None
    assert fabric_throughput.get_available_flops(torch.device("cpu"), torch.float32) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA chip's FLOPs")
def test_available_flops_on_cuda() -> None:
    device = torch.device("cuda", 0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours_throughput.get_available_flops(device, dtype) == fabric_throughput.get_available_flops(
                device, dtype)


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_model_pruning_verbose_messages() -> None:
    """verbose=2: the same sparsity lines (overall and per parameter) on each framework's console logger."""
    found = {}
    for kind, name in (("lightning", "lightning.pytorch.callbacks.pruning"), ("ours", "mopt_fast.trainer")):
        logger, handler = logging.getLogger(name), Messages()
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            run(kind, lambda C: [C.ModelPruning("l1_unstructured", amount=0.25, verbose=2)], max_epochs=2)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        found[kind] = [m for m in handler.messages if m.startswith("Applied")]
    assert found["ours"] == found["lightning"] and len(found["lightning"]) == 2 * 5
