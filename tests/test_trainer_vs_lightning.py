"""Differential tests: the same module trained under lightning.pytorch.Trainer and under
mopt_fast.Trainer must end with the same weights, global_step, callback_metrics and learning rates
(bitwise, except where clipping makes the norm's last bits differ: torch sums in fp32, mopt_fast in
fp64), and call the same hooks in the same order."""
from __future__ import annotations

import pytest
import torch

import lightning_cases as cases
from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")


def assert_same(ref: dict, got: dict, exact: bool = True) -> None:
    assert got["global_step"] == ref["global_step"]
    assert got["current_epoch"] == ref["current_epoch"]
    assert ref["state"].keys() == got["state"].keys()
    for k in ref["state"]:
        if exact:
            assert torch.equal(ref["state"][k], got["state"][k]), k
        else:
            torch.testing.assert_close(got["state"][k], ref["state"][k], rtol=2e-5, atol=2e-6, msg=k)
    assert sorted(got["callback_metrics"]) == sorted(ref["callback_metrics"])
    for k, v in ref["callback_metrics"].items():
        w = got["callback_metrics"][k]
        assert w.dtype == v.dtype, k
        if exact:
            assert torch.equal(w, v), (k, w, v)
        else:
            torch.testing.assert_close(w, v, rtol=2e-5, atol=2e-6, msg=k)
    assert got["lrs"] == pytest.approx(ref["lrs"], rel=1e-12)
    assert got["scheduler_states"] == ref["scheduler_states"]


MANUAL = {
    "minimal": cases.minimal,
    "own_optimizer": cases.own_optimizer,
    "accumulation": cases.accumulation,
    "gan": cases.gan,
    "different_frequencies": cases.different_frequencies,
    "sched_every_step": cases.sched_every_step,
    "sched_two": cases.sched_two,
    "sched_every_n": cases.sched_every_n,
    "sched_plateau": cases.sched_plateau,
    "lbfgs": cases.lbfgs,
    "toggled_gan": cases.toggled_gan,
    "returns_loss": cases.manual_returns_loss,
    "epoch_hook_logging": cases.epoch_hook_logging,
    "eval_submodule_and_stale_grads": cases.eval_submodule_and_stale_grads,
    "custom_zero_grad": cases.custom_zero_grad,
}


@pytest.mark.parametrize("name", list(MANUAL))
def test_manual_guide_examples(name: str) -> None:
    case = MANUAL[name]
    ref = cases.run("lightning", case)
    got = cases.run("mopt_fast", case)
    assert_same(ref, got)
    assert ref["global_step"] > 0 or name == "own_optimizer"


@pytest.mark.parametrize("algorithm,value", [("norm", 0.05), ("value", 0.01), ("norm", 0.0), ("value", -1.0)])
def test_manual_clip_gradients(algorithm: str, value: float) -> None:
    case = cases.clipping(algorithm, value)
    ref = cases.run("lightning", case)
    got = cases.run("mopt_fast", case)
    # clip-by-value and no-op clips are exact; clip-by-norm differs in the norm's rounding only
    assert_same(ref, got, exact=not (algorithm == "norm" and value > 0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gradient_clip_val": 0.05},
        {"gradient_clip_val": 0.02, "gradient_clip_algorithm": "value"},
        {"accumulate_grad_batches": 4},
        {"accumulate_grad_batches": 4, "gradient_clip_val": 0.1},
        {"max_steps": 7, "max_epochs": None},
        {"limit_train_batches": 4, "limit_val_batches": 1, "max_epochs": 4},
        {"limit_train_batches": 0.5, "val_check_interval": 0.5},
        {"val_check_interval": 2, "check_val_every_n_epoch": None, "max_epochs": 2},
        {"check_val_every_n_epoch": 2, "num_sanity_val_steps": 0},
        {"precision": "bf16-mixed"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults",
)
def test_automatic(kwargs: dict) -> None:
    case = cases.automatic()
    ref = cases.run("lightning", case, **kwargs)
    got = cases.run("mopt_fast", case, **kwargs)
    clipped_by_norm = kwargs.get("gradient_clip_val") and kwargs.get("gradient_clip_algorithm", "norm") == "norm"
    assert_same(ref, got, exact=not clipped_by_norm)


@pytest.mark.parametrize("scheduler", ["step_interval", "epoch", "plateau", "plateau_step"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw_fused"])
def test_automatic_schedulers(scheduler: str, optimizer: str) -> None:
    case = cases.automatic(optimizer=optimizer, scheduler=scheduler)
    ref = cases.run("lightning", case, max_epochs=4)
    got = cases.run("mopt_fast", case, max_epochs=4)
    assert_same(ref, got)
    assert ref["scheduler_states"][0]["last_epoch"] > 1  # the scheduler did step


@pytest.mark.parametrize("returns", ["dict", "none"])
def test_automatic_training_step_returns(returns: str) -> None:
    case = cases.automatic(returns=returns)
    assert_same(cases.run("lightning", case), cases.run("mopt_fast", case))


def test_automatic_lbfgs() -> None:
    case = cases.automatic(optimizer="lbfgs")
    assert_same(cases.run("lightning", case, max_epochs=2), cases.run("mopt_fast", case, max_epochs=2))


@pytest.mark.parametrize("name", ["minimal", "gan"])
def test_manual_bf16_mixed(name: str) -> None:
    case = MANUAL[name]
    ref = cases.run("lightning", case, precision="bf16-mixed", max_epochs=2)
    got = cases.run("mopt_fast", case, precision="bf16-mixed", max_epochs=2)
    assert_same(ref, got)


@pytest.mark.parametrize(
    "case,kwargs",
    [
        (cases.minimal, {}),
        (cases.gan, {"limit_train_batches": 3}),
        (cases.automatic(), {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5}),
        (cases.automatic(), {"val_check_interval": 0.5}),
        (cases.minimal, {"max_epochs": 0}),
    ],
    ids=["manual", "gan", "automatic_accumulate_clip", "automatic_val_twice", "nothing_to_do"],
)
def test_hook_order(case, kwargs: dict) -> None:
    rec = cases.recording(case)
    kwargs = {"max_epochs": 2, **kwargs}
    ref = cases.run("lightning", rec, **kwargs)
    got = cases.run("mopt_fast", rec, **kwargs)
    assert got["recorded"] == ref["recorded"]
    assert len(ref["recorded"]) > (2 if kwargs["max_epochs"] == 0 else 20)


@pytest.mark.parametrize("log_every_n_steps", [1, 4, 50])
@pytest.mark.parametrize("with_logger", [True, False], ids=["logger", "no_logger"])
@pytest.mark.parametrize("name", ["minimal", "logging_variety", "automatic"])
def test_logged_metrics_match(name: str, with_logger: bool, log_every_n_steps: int) -> None:
    """Both Trainers with the same logger setting: the same logged_metrics, and with a logger the
    same log_metrics calls (step and values) and the same final status."""
    case = {"minimal": cases.minimal, "logging_variety": cases.logging_variety, "automatic": cases.automatic()}[name]
    loggers = {fw: cases.recording_logger(fw) if with_logger else False for fw in ("lightning", "mopt_fast")}
    ref = cases.run("lightning", case, logger=loggers["lightning"], max_epochs=2, log_every_n_steps=log_every_n_steps)
    got = cases.run("mopt_fast", case, logger=loggers["mopt_fast"], max_epochs=2, log_every_n_steps=log_every_n_steps)
    assert sorted(got["logged_metrics"]) == sorted(ref["logged_metrics"])
    assert "loss_epoch" in ref["logged_metrics"]
    for k, v in ref["logged_metrics"].items():
        assert torch.equal(got["logged_metrics"][k], v), k
    if with_logger:
        assert loggers["mopt_fast"].calls == loggers["lightning"].calls
        assert len(loggers["lightning"].calls) >= 4  # the epoch ends and validation runs at least
        assert loggers["mopt_fast"].finalized == loggers["lightning"].finalized == ["success"]


def batch_tracking(case):
    """`case` recording, at each batch end, batch_idx, is_last_batch and global_step, and at each
    validation start global_step and current_epoch."""
    def make(LM: type) -> type:
        class Tracking(case(LM)):
            def on_train_batch_end(self, outputs, batch, batch_idx):
                self.recorded.append(("batch", batch_idx, self.trainer.is_last_batch, self.trainer.global_step))
                super().on_train_batch_end(outputs, batch, batch_idx)

            def on_validation_start(self):
                self.recorded.append(("validation", self.trainer.global_step, self.trainer.current_epoch))

        return Tracking

    return make


@pytest.mark.parametrize(
    "case,kwargs",
    [
        (cases.minimal, {}),
        (cases.sched_every_n, {}),  # steps its scheduler on trainer.is_last_batch
        (cases.automatic(), {}),
        (cases.automatic(), {"accumulate_grad_batches": 4}),  # the last, short window steps on is_last_batch
        (cases.automatic(scheduler="step_interval"), {"accumulate_grad_batches": 4}),
        (cases.automatic(scheduler="epoch"), {}),
        (cases.automatic(), {"limit_train_batches": 4}),
        (cases.automatic(), {"max_steps": 8, "max_epochs": None}),
        (cases.automatic(), {"val_check_interval": 4, "check_val_every_n_epoch": None}),
    ],
    ids=["manual", "manual_sched_on_last_batch", "automatic", "accumulate", "accumulate_step_sched", "epoch_sched",
         "limit_train_batches", "max_steps", "val_every_4_batches"],
)
def test_loader_without_a_length(case, kwargs: dict) -> None:
    """IterableDataset loaders: the Trainer must find each epoch's last batch by looking ahead. Same
    weights, steps, is_last_batch at every batch and validation points as Lightning."""
    kwargs = {"max_epochs": 2, **kwargs}
    ref = cases.run("lightning", batch_tracking(case), data=cases.make_stream_data(), **kwargs)
    train, val = cases.make_stream_data()
    with pytest.raises(TypeError):
        len(train)
    got = cases.run("mopt_fast", batch_tracking(case), data=(train, val), **kwargs)
    assert got["trainer"].num_training_batches == kwargs.get("limit_train_batches", float("inf"))
    assert_same(ref, got)
    assert got["recorded"] == ref["recorded"]
    assert any(r[0] == "batch" and r[2] for r in ref["recorded"])  # some batch was the last


def test_shuffled_data_and_dropout_draw_the_same_random_numbers() -> None:
    """Equal weights after several epochs of a shuffled loader, dropout and a sanity check can
    only happen when both Trainers draw from the global RNG in the same order."""
    train, val = cases.make_data(shuffle=True)
    ref = cases.run("lightning", cases.minimal, data=(train, val), max_epochs=4, num_sanity_val_steps=2)
    train, val = cases.make_data(shuffle=True)
    got = cases.run("mopt_fast", cases.minimal, data=(train, val), max_epochs=4, num_sanity_val_steps=2)
    assert_same(ref, got)
    # and a different seed gives different weights, so the comparison can fail
    other = cases.run("mopt_fast", cases.minimal, data=cases.make_data(), seed=1, max_epochs=4)
    assert not torch.equal(other["state"]["net.0.weight"], ref["state"]["net.0.weight"])
