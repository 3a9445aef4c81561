"""The Lightning front on its own: the optimizer wrapper (with and without a Trainer), the
16-mixed plugin, toggling, configure_optimizers forms, loggers, progress bar, and every error the
issue names (each also checked to leave the weights and optimizer state as they were)."""
from __future__ import annotations

import copy
import glob
import logging
import os
import warnings

import pytest
import torch
from torch import nn

import mopt_fast
from mopt_fast import LightningModule, LightningOptimizer, MisconfigurationException, Trainer
from mopt_fast.precision import MixedPrecision

import lightning_cases as cases
from helpers import importorskip_unless_ci


def quiet_trainer(**kw) -> Trainer:
    args = dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False)
    args.update(kw)
    return Trainer(**args)


def fit(case, **kw):
    torch.manual_seed(0)
    model = case(LightningModule)()
    trainer = quiet_trainer(**kw)
    train, val = cases.make_data()
    trainer.fit(model, train, val)
    return model, trainer


def snapshot(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()) if opt is not None else None


# -- the wrapper ----------------------------------------------------------------------------------
def test_wrapper_is_the_optimizer_class_and_forwards() -> None:
    p = nn.Parameter(torch.randn(4))
    raw = torch.optim.Adam([p], lr=0.1, betas=(0.8, 0.9))
    w = LightningOptimizer(raw)
    assert isinstance(w, torch.optim.Adam) and isinstance(w, LightningOptimizer)
    assert w.optimizer is raw
    assert w.param_groups is raw.param_groups and w.defaults is raw.defaults and w.state is raw.state
    p.grad = torch.randn(4)
    w.step()
    assert w.state_dict()["state"][0]["step"] == raw.state_dict()["state"][0]["step"] == 1
    assert type(LightningOptimizer(torch.optim.Adam([p]))) is type(w)  # one class per optimizer class


def test_wrapper_step_passes_kwargs_and_returns_the_result() -> None:
    class Recording(torch.optim.SGD):
        def step(self, closure=None, *, tag=None):
            self.seen = tag
            return super().step(closure)

    p = nn.Parameter(torch.randn(3))
    w = LightningOptimizer(Recording([p], lr=0.1))

    def closure():
        p.grad = torch.ones(3)
        return torch.tensor(7.0)

    assert w.step(closure, tag="x").item() == 7.0
    assert w.optimizer.seen == "x"
    with pytest.raises(TypeError, match="callable"):
        w.step(closure=3)


def test_wrapper_zero_grad_fused_and_set_to_none() -> None:
    params = [nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    for q in params:
        q.grad = torch.randn_like(q)
    w = LightningOptimizer(torch.optim.SGD(params, lr=0.1))
    grads = [q.grad for q in params]
    w.zero_grad(set_to_none=False)
    assert all(q.grad is g and torch.count_nonzero(g) == 0 for q, g in zip(params, grads))
    w.zero_grad()
    assert all(q.grad is None for q in params)


def _loop(model, opt, data, clip=None, wrapper=False):
    for x, y in data:
        opt.zero_grad()
        if wrapper:
            with opt.autocast():
                loss = nn.functional.mse_loss(model(x), y)
            opt.backward(loss)
        else:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def test_wrapper_without_a_trainer_clips_like_torch() -> None:
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(10)]
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    b = copy.deepcopy(a)
    _loop(a, torch.optim.AdamW(a.parameters(), lr=1e-2), data, clip=0.1)
    _loop(b, LightningOptimizer(torch.optim.AdamW(b.parameters(), lr=1e-2), gradient_clip_val=0.1), data, wrapper=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    # The clip did act: the same steps from the same start without it end elsewhere.
    torch.manual_seed(0)
    c = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    _loop(c, LightningOptimizer(torch.optim.AdamW(c.parameters(), lr=1e-2)), data, wrapper=True)
    assert not torch.allclose(c[0].weight, b[0].weight)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_16_mixed_plugin_matches_torch_gradscaler(fused: bool, clip: float | None) -> None:
    """The 16-mixed path, driven on the CPU through the plugin (the Trainer maps CPU 16-mixed to
    bf16-mixed, as Lightning does): same weights and scale as torch's GradScaler recipe, including
    steps with inf gradients."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    b = copy.deepcopy(a)
    data = [(torch.randn(16, 8), torch.randn(16, 1)) for _ in range(8)]
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=fused or None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", mopt_fast.amp.GradScaler("cpu", init_scale=2.0**10))
    opt_b = LightningOptimizer(torch.optim.AdamW(b.parameters(), lr=1e-2, fused=fused or None),
                               precision=plugin, gradient_clip_val=clip)
    for i, (x, y) in enumerate(data):
        bad = i in (2, 5)
        opt_a.zero_grad()
        loss = nn.functional.mse_loss(a(x), y) * (float("inf") if bad else 1.0)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt_a)
            torch.nn.utils.clip_grad_norm_(a.parameters(), clip)
        scaler.step(opt_a)
        scaler.update()

        opt_b.zero_grad()
        loss = nn.functional.mse_loss(b(x), y) * (float("inf") if bad else 1.0)
        opt_b.backward(loss)
        opt_b.step()
    assert plugin.scaler.get_scale() == scaler.get_scale() < 2.0**10
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=2e-5, atol=2e-6)


def test_16_mixed_with_lbfgs_is_an_error_and_changes_nothing() -> None:
    model = nn.Linear(4, 1)
    w = LightningOptimizer(torch.optim.LBFGS(model.parameters()), precision=MixedPrecision("16-mixed", "cpu"))
    before = snapshot(model, w.optimizer)
    with pytest.raises(ValueError, match="LBFGS"):
        w.step(lambda: model(torch.randn(2, 4)).sum())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[0].items())


def test_trainer_16_mixed_on_cpu_falls_back_to_bf16_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="bf16-mixed"):
        t = quiet_trainer(precision="16-mixed")
    assert t.precision == "bf16-mixed" and t.scaler is None


# -- the module API --------------------------------------------------------------------------------
def test_optimizers_and_lr_schedulers_shapes() -> None:
    model, trainer = fit(cases.sched_two)
    opts = model.optimizers()
    assert isinstance(opts, list) and len(opts) == 2 and all(isinstance(o, LightningOptimizer) for o in opts)
    assert [o.optimizer for o in opts] == trainer.optimizers == model.optimizers(use_pl_optimizer=False)
    assert isinstance(model.lr_schedulers(), list) and len(model.lr_schedulers()) == 2
    model, _ = fit(cases.minimal)
    assert isinstance(model.optimizers(), torch.optim.SGD) and model.lr_schedulers() is None
    model, trainer = fit(cases.sched_every_step)
    assert isinstance(model.lr_schedulers(), torch.optim.lr_scheduler.StepLR)
    assert model.trainer is trainer and trainer.lightning_module is model  # stays attached after fit


def test_toggle_with_shared_and_frozen_parameters() -> None:
    class Shared(LightningModule):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(2, 2)
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)
            self.b.bias.requires_grad_(False)  # frozen by the user
            self.automatic_optimization = False

        def configure_optimizers(self):
            return (torch.optim.SGD([*self.shared.parameters(), *self.a.parameters()], lr=0.1),
                    torch.optim.SGD([*self.shared.parameters(), *self.b.parameters()], lr=0.1))

    m = Shared()
    t = quiet_trainer()
    m.trainer = t
    t.lightning_module = m
    t._setup_optimizers(m)
    opt_a, opt_b = m.optimizers()
    with m.toggled_optimizer(opt_a):
        assert m.shared.weight.requires_grad and m.a.weight.requires_grad
        assert not m.b.weight.requires_grad and not m.b.bias.requires_grad
    assert m.b.weight.requires_grad and not m.b.bias.requires_grad and m.a.weight.requires_grad
    m.toggle_optimizer(opt_b)
    assert m.shared.weight.requires_grad and m.b.weight.requires_grad and not m.b.bias.requires_grad
    assert not m.a.weight.requires_grad
    m.untoggle_optimizer(opt_b)
    assert m.a.weight.requires_grad and not m.b.bias.requires_grad
    with opt_a.toggle_model():
        assert not m.b.weight.requires_grad
    assert m.b.weight.requires_grad


@pytest.mark.parametrize(
    "conf",
    ["opt", "list", "tuple", "lists", "dict", "dict_sched_dict", "list_of_dicts"],
)
def test_configure_optimizers_forms_match_lightning(conf: str) -> None:
    _configure_optimizers = importorskip_unless_ci("lightning.pytorch.core.optimizer")._configure_optimizers

    from mopt_fast.core.optimizer import configure_optimizers

    p, q = nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(2))
    o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.Adam([q])
    s1 = torch.optim.lr_scheduler.StepLR(o1, 2)
    forms = {
        "opt": o1, "list": [o1, o2], "tuple": (o1, o2), "lists": ([o1, o2], [s1]),
        "dict": {"optimizer": o1, "lr_scheduler": s1},
        "dict_sched_dict": {"optimizer": o1, "lr_scheduler": {"scheduler": s1, "interval": "step", "frequency": 3}},
        "list_of_dicts": [{"optimizer": o1, "lr_scheduler": s1}, {"optimizer": o2}],
    }
    opts, configs = configure_optimizers(forms[conf], automatic=False)
    ref_opts, ref_scheds, _ = _configure_optimizers(forms[conf])
    assert opts == ref_opts
    assert [c.scheduler for c in configs] == [s["scheduler"] if isinstance(s, dict) else s for s in ref_scheds]
    if conf == "dict_sched_dict":
        assert configs[0].interval == "step" and configs[0].frequency == 3


def test_manual_mode_scheduler_dict_keys_warn_and_are_never_stepped() -> None:
    class M(cases.minimal(LightningModule)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sch = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "monitor": "loss", "strict": True}}

    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="will be ignored"):
        trainer = quiet_trainer(max_epochs=2)
        trainer.fit(M(), cases.make_data()[0])
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 0


# -- errors -----------------------------------------------------------------------------------------
def test_manual_backward_in_automatic_mode_is_an_error() -> None:
    class M(cases.automatic()(LightningModule)):
        def training_step(self, batch, batch_idx):
            self.manual_backward(self.compute_loss(batch))

    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        quiet_trainer().fit(M(), cases.make_data()[0])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"gradient_clip_val": "1"}, TypeError, "int or a float"),
        ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "l1"}, MisconfigurationException, "invalid"),
        ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": 3}, MisconfigurationException, "invalid"),
    ],
)
def test_clip_gradients_validation_loses_nothing(kwargs, error, match) -> None:
    checked = []

    class M(cases.minimal(LightningModule)):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.compute_loss(batch))
            grads = [p.grad.clone() for p in self.parameters()]
            with pytest.raises(error, match=match):
                self.clip_gradients(opt, **kwargs)
            assert all(torch.equal(g, p.grad) for g, p in zip(grads, self.parameters()))
            opt.step()
            checked.append(batch_idx)

    _, trainer = fit(lambda LM: M)
    assert len(checked) == trainer.num_training_batches > 0  # every batch got there


def test_clip_gradients_conflicting_with_trainer_flags() -> None:
    class M(cases.automatic()(LightningModule)):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.3)

    with pytest.raises(MisconfigurationException, match="use only one"):
        fit(lambda LM: M, gradient_clip_val=0.5)

    class N(cases.automatic()(LightningModule)):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            self.clip_gradients(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="value")

    with pytest.raises(MisconfigurationException, match="use only one"):
        fit(lambda LM: N, gradient_clip_val=0.5, gradient_clip_algorithm="norm")


def test_configure_gradient_clipping_only_in_automatic_mode() -> None:
    calls = []

    def with_hook(case):
        def make(LM):
            class M(case(LM)):
                def configure_gradient_clipping(self, *a, **k):
                    calls.append(self.automatic_optimization)

            return M

        return make

    fit(with_hook(cases.minimal))
    assert calls == []
    fit(with_hook(cases.automatic()))
    assert calls and all(calls)


@pytest.mark.parametrize("kw,match", [({"gradient_clip_val": 1.0}, "manual optimization"),
                                      ({"accumulate_grad_batches": 2}, "manual optimization")])
def test_manual_mode_rejects_trainer_clipping_and_accumulation(kw, match) -> None:
    torch.manual_seed(0)
    model = cases.minimal(LightningModule)()
    before = snapshot(model)
    with pytest.raises(MisconfigurationException, match=match):
        quiet_trainer(**kw).fit(model, cases.make_data()[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[0].items())


def test_manual_training_step_must_return_a_tensor() -> None:
    class M(cases.minimal(LightningModule)):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            return 1.5

    with pytest.raises(MisconfigurationException, match="must either return a Tensor"):
        fit(lambda LM: M)


def test_automatic_training_step_dict_needs_loss() -> None:
    class M(cases.automatic()(LightningModule)):
        def training_step(self, batch, batch_idx):
            return {"not_loss": self.compute_loss(batch)}

    with pytest.raises(MisconfigurationException, match="'loss' key"):
        fit(lambda LM: M)


def test_multiple_optimizers_need_manual_optimization() -> None:
    class M(cases.gan(LightningModule)):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = True

    with pytest.raises(MisconfigurationException, match="manual optimization"):
        fit(lambda LM: M)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        ({"strategy": "deepspeed"}, MisconfigurationException, r"strategy='deepspeed' is not supported"),
        ({"devices": "two"}, MisconfigurationException, r"devices='two' is not understood"),
        ({"num_nodes": 0}, ValueError, r"`num_nodes` must be a positive integer, but got 0."),
        ({"enable_checkpointing": False, "callbacks": [mopt_fast.ModelCheckpoint()]}, MisconfigurationException,
         r"`enable_checkpointing=False` but found `ModelCheckpoint` in callbacks"),
        ({"profiler": "fancy"}, MisconfigurationException,
         r"it can only be one of \['simple', 'advanced', 'pytorch', 'xla'\]"),
        ({"no_such_argument": 1}, TypeError, r"unexpected keyword argument 'no_such_argument'"),
        ({"precision": "transformer-engine"}, ValueError, r"precision='transformer-engine' is not supported"),
        ({"accelerator": "tpu"}, MisconfigurationException, r"accelerator='tpu' is not supported"),
        ({"accumulate_grad_batches": 0}, MisconfigurationException, r"`accumulate_grad_batches` should be an int >= 1"),
        ({"gradient_clip_algorithm": "l3"}, MisconfigurationException, r"`gradient_clip_algorithm` l3 is invalid"),
        ({"limit_train_batches": 1.5}, MisconfigurationException,
         r"You have passed invalid value 1.5 for limit_train_batches, it has to be in \[0.0, 1.0\] or an int."),
    ],
    ids=["deepspeed", "devices", "num_nodes", "checkpoint_callback_disabled", "profiler",
         "unknown_argument", "precision", "accelerator", "accumulate_grad_batches", "gradient_clip_algorithm",
         "limit_train_batches"],
)
def test_unsupported_or_bad_trainer_arguments(kw, error, match) -> None:
    with pytest.raises(error, match=match):
        quiet_trainer(**kw)


def test_bad_configure_optimizers() -> None:
    class M(cases.automatic()(LightningModule)):
        def configure_optimizers(self):
            return "adam"

    with pytest.raises(MisconfigurationException, match="Unknown configuration"):
        fit(lambda LM: M)

    class P(cases.automatic()(LightningModule)):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]

    with pytest.raises(MisconfigurationException, match="monitor"):
        fit(lambda LM: P)


@pytest.mark.parametrize(
    "value,where,match",
    [
        ({"a": 1.0}, "training_step", "nested dictionaries"),
        ("text", "training_step", "cannot be logged"),
        (torch.ones(3), "training_step", "single element"),
        (1.0, "on_train_end", "can't `self.log"),
        ("on_step", "on_train_epoch_end", "on_step=True"),
    ],
)
def test_log_errors(value, where, match) -> None:
    class M(cases.minimal(LightningModule)):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            if where == "training_step":
                self.log("bad", value)

        def on_train_end(self):
            if where == "on_train_end":
                self.log("bad", value)

        def on_train_epoch_end(self):
            if where == "on_train_epoch_end":
                self.log("bad", 1.0, on_step=True)

    with pytest.raises((ValueError, MisconfigurationException), match=match):
        fit(lambda LM: M)


# -- what users see ----------------------------------------------------------------------------------
def test_csv_logger_progress_bar_and_summary(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = cases.gan(LightningModule)()
    # The default logger is TensorBoard's when tensorboard is installed (as Lightning): CSV explicitly.
    trainer = Trainer(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path), log_every_n_steps=2,
                      enable_checkpointing=False, logger=mopt_fast.CSVLogger(str(tmp_path)))
    messages: list[str] = []
    capture = logging.Handler()
    capture.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("mopt_fast.trainer").addHandler(capture)
    try:
        trainer.fit(model, cases.make_data()[0])
    finally:
        logging.getLogger("mopt_fast.trainer").removeHandler(capture)
    out, err = capsys.readouterr()
    summary = "".join(messages)  # the summary goes to the INFO log, as Lightning's
    assert "Trainable params" in summary and "G" in summary and "Sequential" in summary
    assert "Epoch 1" in out and "g_loss" in out and "d_loss" in out  # the tqdm bar writes to stdout, as Lightning's
    csv_path = os.path.join(str(tmp_path), "lightning_logs", "version_0", "metrics.csv")
    lines = open(csv_path).read().splitlines()
    header = lines[0].split(",")
    assert {"g_loss", "d_loss", "epoch", "step"} <= set(header)
    assert len(lines) - 1 == trainer.global_step // 2 // 2  # two optimizer steps per batch, a row every 2 batches
    last = dict(zip(header, lines[-1].split(",")))
    assert float(last["g_loss"]) == pytest.approx(trainer.logged_metrics["g_loss"].item())


def test_tensorboard_logger(tmp_path) -> None:
    importorskip_unless_ci("tensorboard")
    torch.manual_seed(0)
    logger = mopt_fast.TensorBoardLogger(str(tmp_path))
    quiet_trainer(logger=logger, log_every_n_steps=1).fit(cases.minimal(LightningModule)(), cases.make_data()[0])
    assert glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))


def test_callbacks_run_before_the_module_hooks() -> None:
    order = []

    class CB(mopt_fast.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            order.append("callback")

    class M(cases.minimal(LightningModule)):
        def on_train_epoch_end(self):
            order.append("module")

    torch.manual_seed(0)
    quiet_trainer(callbacks=[CB()]).fit(M(), cases.make_data()[0])
    assert order == ["callback", "module"]


def test_no_warning_storm_in_a_plain_fit() -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_trainer(max_epochs=2).fit(cases.gan(LightningModule)(), cases.make_data()[0])
