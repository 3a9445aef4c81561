"""Checkpoints: exact resume after SIGKILL (subprocesses), atomic writes, safe loading, and
ModelCheckpoint's selection rules."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings

import pytest
import torch

import lightning_cases as cases
import mopt_fast
from mopt_fast import LightningModule, ModelCheckpoint, Trainer
from mopt_fast.trainer.checkpoint import load_checkpoint, save_atomic

CHILD = os.path.join(os.path.dirname(__file__), "resume_child.py")
BATCHES_PER_EPOCH = 6  # make_data(): 96 samples, batch 16


def child(*args: str, expect_kill: bool = False) -> None:
    proc = subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]


def final(out: str) -> dict:
    return torch.load(os.path.join(out, "final.pt"), weights_only=True)


def assert_bitwise(ref: dict, got: dict) -> None:
    assert got["global_step"] == ref["global_step"]
    for k, v in ref["state"].items():
        assert torch.equal(got["state"][k], v), k
    assert str(got["optimizers"]) == str(ref["optimizers"])  # same tensors print the same


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per case (and per checkpoint schedule, which must not matter)."""
    done: dict[tuple, dict] = {}

    def get(case: str, every: str) -> dict:
        if (case, every) not in done:
            out = str(tmp_path_factory.mktemp(f"ref-{case}-{every}"))
            child(case, out, "--save-every", every)
            done[(case, every)] = final(out)
        return done[(case, every)]

    return get


@pytest.mark.parametrize(
    "case,every",
    [("gan", "step"), ("manual_sched", "step"), ("automatic", "step"), ("automatic_bf16", "step"),
     ("manual_sched", "epoch"), ("automatic", "epoch")],
)
def test_sigkill_then_resume_is_bitwise_exact(case: str, every: str, reference, tmp_path) -> None:
    # A random batch to die at, mid-epoch or at an epoch boundary; the seed is in the test id's
    # failure message so a failure can be replayed.
    seed = random.randrange(10**6)
    kill_at = random.Random(seed).randrange(2, 3 * BATCHES_PER_EPOCH)
    if every == "epoch":
        kill_at = max(kill_at, BATCHES_PER_EPOCH + 1)  # after the first epoch-end checkpoint
    out = str(tmp_path)
    child(case, out, "--save-every", every, "--kill-at-batch", str(kill_at), expect_kill=True)
    assert os.path.isfile(os.path.join(out, "ckpt", "last.ckpt")), f"seed={seed} kill_at={kill_at}"
    child(case, out, "--save-every", every, "--resume")
    ref = reference(case, every)
    try:
        assert_bitwise(ref, final(out))
    except AssertionError as e:
        raise AssertionError(f"seed={seed} kill_at={kill_at}: {e}") from e


def test_sigkill_inside_a_save_leaves_the_previous_checkpoint(reference, tmp_path) -> None:
    out = str(tmp_path)
    child("gan", out, "--kill-in-save", "8", expect_kill=True)
    ckpt_dir = os.path.join(out, "ckpt")
    leftovers = [f for f in os.listdir(ckpt_dir) if f.startswith(".tmp-")]
    assert leftovers, "the 8th save was killed after writing its temporary file"
    last = load_checkpoint(os.path.join(ckpt_dir, "last.ckpt"))
    assert last["global_step"] == 2 * 7  # the 7th save, two optimizer steps per batch
    child("gan", out, "--resume")
    assert_bitwise(reference("gan", "step"), final(out))


# -- loading is safe ----------------------------------------------------------------------------------
def _fitted(tmp_path, ckpt_path=None, **kw):
    torch.manual_seed(0)
    model = cases.minimal(LightningModule)()
    kw = {"max_epochs": 2, **kw}
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), **kw)
    trainer.fit(model, *cases.make_data(), ckpt_path=ckpt_path)
    return model, trainer


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/mopt_fast_pwned",))


def test_bad_files_are_clear_errors(tmp_path) -> None:
    model, trainer = _fitted(tmp_path)
    good = str(tmp_path / "good.ckpt")
    trainer.save_checkpoint(good)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = str(tmp_path / "foreign.ckpt")
    torch.save({"state_dict": model.state_dict()}, foreign)
    evil = str(tmp_path / "evil.ckpt")
    torch.save({"format": "mopt_fast.checkpoint/1", "x": Evil()}, evil)
    assert load_checkpoint(good)["global_step"] == trainer.global_step
    with pytest.raises(ValueError, match="not a loadable"):
        load_checkpoint(str(truncated))
    with pytest.raises(ValueError, match="format marker"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="not a loadable"):
        load_checkpoint(evil)
    assert not os.path.exists("/tmp/mopt_fast_pwned")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.ckpt"))
    # a rejected resume leaves the new model as it was
    torch.manual_seed(5)
    fresh = cases.minimal(LightningModule)()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    t = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False)
    with pytest.raises(ValueError):
        t.fit(fresh, cases.make_data()[0], ckpt_path=str(truncated))
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())


def test_save_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "x.ckpt")
    save_atomic({"a": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["x.ckpt"]


# -- ModelCheckpoint ----------------------------------------------------------------------------------
def test_top_k_by_monitor_and_filename_format(tmp_path) -> None:
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), filename="{epoch}-{val_loss:.4f}", monitor="val_loss",
                           mode="min", save_top_k=2, save_last=True)
    scores = []

    class Record(mopt_fast.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            scores.append(float(trainer.callback_metrics["val_loss"]))

    _fitted(tmp_path, callbacks=[ckpt, Record()], max_epochs=5)
    files = sorted(f for f in os.listdir(tmp_path / "c"))
    assert "last.ckpt" in files and len(files) == 3
    best_two = sorted(range(5), key=lambda e: scores[e])[:2]
    assert sorted(f for f in files if f != "last.ckpt") == sorted(
        f"epoch={e}-val_loss={scores[e]:.4f}.ckpt" for e in best_two)
    assert ckpt.best_model_score == pytest.approx(min(scores))
    assert load_checkpoint(ckpt.best_model_path)["epoch"] == best_two[0]


def test_default_checkpointing_keeps_the_newest_epoch(tmp_path) -> None:
    _, trainer = _fitted(tmp_path, max_epochs=3)
    cb = trainer.checkpoint_callback
    assert cb.dirpath == os.path.join(str(tmp_path), "checkpoints")
    assert os.listdir(cb.dirpath) == [f"epoch=2-step={trainer.global_step}.ckpt"]


def test_module_checkpoint_hooks_and_weights_only(tmp_path) -> None:
    class M(cases.minimal(LightningModule)):
        loaded = None

        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = {"note": "hi", "t": torch.arange(3)}

        def on_load_checkpoint(self, checkpoint):
            M.loaded = checkpoint["extra"]

    torch.manual_seed(0)
    model = M()
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, cases.make_data()[0])
    path = str(tmp_path / "full.ckpt")
    trainer.save_checkpoint(path)
    light = str(tmp_path / "weights.ckpt")
    trainer.save_checkpoint(light, weights_only=True)
    assert "optimizer_states" not in load_checkpoint(light)
    t2 = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 enable_checkpointing=False)
    t2.fit(M(), cases.make_data()[0], ckpt_path=path)
    assert M.loaded["note"] == "hi" and torch.equal(M.loaded["t"], torch.arange(3))
    assert t2.current_epoch == 2 and t2.global_step == 2 * trainer.global_step
    with pytest.raises(ValueError, match="weights_only"):
        Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False).fit(M(), cases.make_data()[0], ckpt_path=light)


def test_resume_last_without_a_checkpoint_warns_and_starts_fresh(tmp_path) -> None:
    with pytest.warns(UserWarning, match="no last checkpoint"):
        _, trainer = _fitted(tmp_path, ckpt_path="last", callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "none"))])
    assert trainer.current_epoch == 2


# -- which files ModelCheckpoint keeps, against Lightning's own ------------------------------------
@pytest.mark.parametrize(
    "ckpt_kwargs,trainer_kwargs",
    [
        ({"monitor": "val_loss", "save_top_k": 2, "filename": "{epoch}-{step}"}, {}),
        ({"every_n_train_steps": 2, "save_top_k": -1, "save_last": True}, {"accumulate_grad_batches": 3}),
        ({"filename": "{epoch}", "save_top_k": -1}, {"val_check_interval": 0.5}),
        ({"save_top_k": -1}, {"check_val_every_n_epoch": 2}),
        ({"monitor": "loss_step", "mode": "max", "every_n_train_steps": 1, "save_top_k": 3,
          "filename": "{loss_step:.0f}"}, {}),
    ],
    ids=["top2_val", "steps_accumulating", "val_twice_per_epoch", "val_every_2_epochs", "name_clash_versions"],
)
def test_model_checkpoint_keeps_the_files_lightning_keeps(ckpt_kwargs, trainer_kwargs, tmp_path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    results = {}
    for name, LM, T, MC in (("lightning", pl.LightningModule, pl.Trainer, pl.callbacks.ModelCheckpoint),
                            ("mopt_fast", LightningModule, Trainer, ModelCheckpoint)):
        folder = tmp_path / name
        cb = MC(dirpath=str(folder), **ckpt_kwargs)
        torch.manual_seed(0)
        model = cases.automatic()(LM)()
        trainer = T(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[cb], default_root_dir=str(tmp_path), **trainer_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *cases.make_data())
        score = cb.best_model_score
        results[name] = (sorted(os.listdir(folder)), os.path.basename(cb.best_model_path),
                         None if score is None else round(float(score), 6))
    assert results["mopt_fast"] == results["lightning"]
    assert len(results["lightning"][0]) >= 2


@pytest.mark.parametrize(
    "trainer_kwargs",
    [{"accumulate_grad_batches": 4}, {"val_check_interval": 0.5}, {"check_val_every_n_epoch": 2}],
    ids=["accumulation", "mid_epoch_validation", "validation_every_2_epochs"],
)
def test_every_checkpoint_resumes_bitwise(trainer_kwargs, tmp_path) -> None:
    """Resume from each checkpoint a run wrote (after steps, validations and epochs) and end
    where the run ended: weights, optimizer state, schedulers and callback_metrics."""
    # (validating every 2 epochs leaves no val_loss for a plateau scheduler after epoch 0)
    scheduler = "step_interval" if trainer_kwargs.get("check_val_every_n_epoch") else "plateau"

    def fit(ckpt_path=None, callbacks=()):
        torch.manual_seed(0 if ckpt_path is None else 99)
        model = cases.automatic(scheduler=scheduler)(LightningModule)()
        trainer = Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                          **trainer_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *cases.make_data(), ckpt_path=ckpt_path)
        return model, trainer

    every_step = ModelCheckpoint(dirpath=str(tmp_path / "s"), every_n_train_steps=1, save_top_k=-1)
    every_epoch = ModelCheckpoint(dirpath=str(tmp_path / "e"), filename="end-{epoch}-{step}", save_top_k=-1)
    ref_model, ref = fit(callbacks=(every_step, every_epoch))
    files = sorted(tmp_path.glob("*/*.ckpt"))
    assert len(files) > 8
    for path in files[:: max(1, len(files) // 8)]:
        model, trainer = fit(ckpt_path=str(path))
        assert trainer.global_step == ref.global_step, path
        for k, v in ref_model.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (path, k)
        assert str(trainer.optimizers[0].state_dict()) == str(ref.optimizers[0].state_dict()), path
        assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == ref.lr_scheduler_configs[0].scheduler.state_dict()
        assert {k: v.item() for k, v in trainer.callback_metrics.items()} == {
            k: v.item() for k, v in ref.callback_metrics.items()}, path
