"""Differential tests: the same module trained under lightning.pytorch.Trainer and under
mopt_fast.Trainer must end with the same weights, global_step, callback_metrics and learning rates
(bitwise, except where clipping makes the norm's last bits differ: torch sums in fp32, mopt_fast in
fp64), and call the same hooks in the same order."""
from __future__ import annotations

import tempfile
import warnings
from typing import Any

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


class Boom(RuntimeError):
    pass


def failing(case, where: str, epoch: int = 1, batch: int = 2):
    """`case` raising Boom in training_step (at `batch` of `epoch`), in validation_step (in `epoch`)
    or in the sanity check; the exception raised is kept in `self.raised`."""
    def make(LM: type) -> type:
        class Failing(case(LM)):
            raised: Boom | None = None

            def _boom(self, message: str) -> None:
                self.raised = Boom(message)
                raise self.raised

            def training_step(self, batch_, batch_idx):
                if where == "training_step" and self.current_epoch == epoch and batch_idx == batch:
                    self._boom("boom in training_step")
                return super().training_step(batch_, batch_idx)

            def validation_step(self, batch_, batch_idx):
                if where == "validation_step" and self.current_epoch == epoch and not self.trainer.sanity_checking:
                    self._boom("boom in validation_step")
                if where == "sanity_check" and self.trainer.sanity_checking:
                    self._boom("boom in the sanity check")
                return super().validation_step(batch_, batch_idx)

        return Failing

    return make


def run_failing(framework: str, case) -> dict[str, Any]:
    """cases.run for a fit that raises: what the exception, the callbacks, the logger, the trainer
    and the module were left with."""
    LM, Trainer = cases.frameworks(framework)
    if framework == "lightning":
        from lightning.pytorch import Callback
    else:
        from mopt_fast import Callback
    events: list[tuple] = []
    logger = cases.recording_logger(framework)

    def stage(trainer) -> tuple:
        return (trainer.training, trainer.validating, trainer.sanity_checking, trainer.global_step,
                trainer.current_epoch, trainer.is_last_batch)

    class Recorder(Callback):
        def on_exception(self, trainer, pl_module, exception):
            events.append(("on_exception", exception, pl_module, stage(trainer), list(logger.finalized)))

        def on_train_end(self, trainer, pl_module):
            events.append(("on_train_end",))

        def on_fit_end(self, trainer, pl_module):
            events.append(("on_fit_end",))

        def teardown(self, trainer, pl_module, stage):
            events.append(("teardown", stage))

    torch.manual_seed(0)
    model = case(LM)()
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=logger, callbacks=[Recorder()],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tempfile.mkdtemp(prefix="mopt_fast_test_"))
    train, val = cases.make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Boom) as excinfo:
            trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    assert excinfo.value is model.raised  # the exception itself propagates
    exception_events = [e for e in events if e[0] == "on_exception"]
    assert len(exception_events) == 1
    _, exc, module, stage_then, finalized_then = exception_events[0]
    assert exc is model.raised and module is model
    return {
        "events": [e[0] for e in events],
        "stage_in_on_exception": stage_then,
        "finalized_before_on_exception": finalized_then,
        "finalized": list(logger.finalized),
        "stage_after": (*stage(trainer), trainer.should_stop),
        "attached": model.trainer is trainer,
        "modes": [m.training for m in model.modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "optimizer_states": [opt.state_dict() for opt in trainer.optimizers],
        "callback_metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
        "logged_metrics": {k: v.detach().clone() for k, v in trainer.logged_metrics.items()},
    }


@pytest.mark.parametrize("where", ["training_step", "validation_step", "sanity_check"])
@pytest.mark.parametrize("name", ["minimal", "automatic"])
def test_failed_fit(name: str, where: str) -> None:
    """An exception inside fit propagates; on_exception is called on the callbacks (and the loggers
    finalized as "failed") as Lightning does, with the trainer in the stage it failed in, and the
    trainer, weights, gradients, optimizer state and metrics are left as Lightning leaves them."""
    case = failing(cases.minimal if name == "minimal" else cases.automatic(), where)
    ref = run_failing("lightning", case)
    got = run_failing("mopt_fast", case)
    assert ref["events"] == got["events"] == ["on_exception"]  # no on_train_end, on_fit_end or teardown
    assert got["stage_in_on_exception"] == ref["stage_in_on_exception"]
    assert got["finalized_before_on_exception"] == ref["finalized_before_on_exception"] == []
    assert got["finalized"] == ref["finalized"] == ["failed"]
    assert got["stage_after"] == ref["stage_after"]
    assert got["attached"] and ref["attached"]
    if where == "training_step":
        # A failed validation leaves Lightning's modules in eval mode; mopt_fast puts each back.
        assert got["modes"] == ref["modes"]
    for k, v in ref["state"].items():
        assert torch.equal(got["state"][k], v), k
    assert len(got["grads"]) == len(ref["grads"])
    for g, r in zip(got["grads"], ref["grads"]):
        assert (g is None) == (r is None) and (g is None or torch.equal(g, r))
    torch.testing.assert_close(got["optimizer_states"], ref["optimizer_states"], rtol=0, atol=0)
    for key in ("callback_metrics", "logged_metrics"):
        assert sorted(got[key]) == sorted(ref[key]), key
        for k, v in ref[key].items():
            assert torch.equal(got[key][k], v), (key, k)
    if where == "training_step":
        assert ref["stage_in_on_exception"][3] > 0  # it failed after some steps


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
