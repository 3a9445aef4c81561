"""Checkpoints: exact resume after SIGKILL (subprocesses), atomic writes, safe loading (corrupt,
bit-flipped, foreign and code-carrying files), stale temporary files, resume with persistent
DataLoader workers, and ModelCheckpoint's selection rules."""
from __future__ import annotations

import math
import os
import re
import socket
import struct
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import mopt_fast
from mopt_fast import LightningModule, ModelCheckpoint, Trainer
from mopt_fast.core.saving import load_checkpoint, remove_stale_temporaries, save_atomic

import lightning_cases as cases

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


def assert_identical(got, ref, where: str = "") -> None:
    """The same data exactly: the same container types, keys and lengths; tensors of the same
    dtype and shape with the same bits (torch.equal on the bytes, so NaN matches NaN and -0.0
    does not match 0.0); numbers with the same bits."""
    assert type(got) is type(ref), f"{where}: {type(got).__name__} != {type(ref).__name__}"
    if isinstance(ref, torch.Tensor):
        assert (got.dtype, got.shape) == (ref.dtype, ref.shape), f"{where}: {got.dtype}{list(got.shape)} != " \
                                                                 f"{ref.dtype}{list(ref.shape)}"
        as_bytes = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (got, ref)]
        assert torch.equal(*as_bytes), f"{where}: {got} != {ref}"
    elif isinstance(ref, dict):
        assert list(got) == list(ref), f"{where}: keys {list(got)} != {list(ref)}"
        for k in ref:
            assert_identical(got[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), f"{where}: length {len(got)} != {len(ref)}"
        for i, (g, r) in enumerate(zip(got, ref)):
            assert_identical(g, r, f"{where}[{i}]")
    elif isinstance(ref, float):
        assert struct.pack("<d", got) == struct.pack("<d", ref), f"{where}: {got!r} != {ref!r}"
    else:
        assert got == ref, f"{where}: {got!r} != {ref!r}"


def test_assert_identical_sees_what_str_hides() -> None:
    """The optimizer-state comparison used to go through str(), which prints four digits."""
    a = {"state": {0: {"momentum_buffer": torch.tensor([1.5, 2.5])}}, "param_groups": [{"lr": 0.1}]}
    b = {"state": {0: {"momentum_buffer": torch.tensor([1.5, 2.5 + 1e-6])}}, "param_groups": [{"lr": 0.1}]}
    assert str(a) == str(b)
    with pytest.raises(AssertionError, match="momentum_buffer"):
        assert_identical(b, a)
    with pytest.raises(AssertionError, match="lr"):
        assert_identical({**a, "param_groups": [{"lr": math.nextafter(0.1, 1.0)}]}, a)
    with pytest.raises(AssertionError, match="int != float"):
        assert_identical({**a, "param_groups": [{"lr": 1}]}, {**a, "param_groups": [{"lr": 1.0}]})
    assert_identical({"x": torch.tensor([float("nan")]), "f": float("nan")},
                     {"x": torch.tensor([float("nan")]), "f": float("nan")})


def assert_bitwise(ref: dict, got: dict) -> None:
    assert got["global_step"] == ref["global_step"]
    assert_identical(got["state"], ref["state"], "state")
    assert_identical(got["optimizers"], ref["optimizers"], "optimizers")


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


# The training batch (counted over the run, from 1; 6 per epoch) each case dies at: mid-epoch, the
# first batch of an epoch (the newest checkpoint is the previous epoch's last) and the last batch
# of one, spread over the cases; with epoch checkpoints, after the first one.
KILL_POINTS = [("gan", "step", 9), ("manual_sched", "step", 7), ("automatic", "step", 12),
               ("automatic_bf16", "step", 4), ("manual_sched", "epoch", 13), ("automatic", "epoch", 10)]


@pytest.mark.parametrize("case,every,kill_at", KILL_POINTS, ids=[f"{c}-{e}-kill_at_{k}" for c, e, k in KILL_POINTS])
def test_sigkill_then_resume_is_bitwise_exact(case: str, every: str, kill_at: int, reference, tmp_path) -> None:
    out = str(tmp_path)
    child(case, out, "--save-every", every, "--kill-at-batch", str(kill_at), expect_kill=True)
    assert os.path.isfile(os.path.join(out, "ckpt", "last.ckpt"))
    child(case, out, "--save-every", every, "--resume")
    assert_bitwise(reference(case, every), final(out))


def test_sigkill_inside_a_save_leaves_the_previous_checkpoint(reference, tmp_path) -> None:
    out = str(tmp_path)
    child("gan", out, "--kill-in-save", "8", expect_kill=True)
    ckpt_dir = os.path.join(out, "ckpt")
    leftovers = [f for f in os.listdir(ckpt_dir) if f.startswith(".tmp-")]
    assert len(leftovers) == 1, "the 8th save was killed after writing its temporary file"
    last = load_checkpoint(os.path.join(ckpt_dir, "last.ckpt"))
    assert last["global_step"] == 2 * 7  # the 7th save, two optimizer steps per batch
    child("gan", out, "--resume")
    assert_bitwise(reference("gan", "step"), final(out))
    # the resumed run removed what the killed one left
    assert sorted(os.listdir(ckpt_dir)) == ["last.ckpt"]


def test_only_stale_temporaries_of_this_host_are_removed(tmp_path) -> None:
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead_writer": f".tmp-{dead.pid}-{host}~abc.ckpt",
            "live_writer": f".tmp-{alive.pid}-{host}~abc.ckpt",
            "other_host": f".tmp-{dead.pid}-{host}x~abc.ckpt",
            "not_ours": f".tmp-{dead.pid}-{host}~abc.txt",
            "checkpoint": "epoch=0-step=6.ckpt",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        removed = remove_stale_temporaries(str(tmp_path))
        assert removed == [str(tmp_path / names["dead_writer"])]
        assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead_writer")
    finally:
        alive.kill()
        alive.wait()


def test_a_save_removes_stale_temporaries_but_not_its_own(tmp_path, monkeypatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-{dead.pid}-{socket.gethostname()}~abc.ckpt"
    stale.write_bytes(b"left by a killed save")
    seen_while_writing = []
    real_save = torch.save

    def save_and_look(obj, f):
        real_save(obj, f)
        seen_while_writing.extend(os.listdir(tmp_path))
        # a sweep while this file is being written must leave it alone
        assert remove_stale_temporaries(str(tmp_path)) == []

    monkeypatch.setattr(torch, "save", save_and_look)
    save_atomic({"a": torch.ones(2)}, str(tmp_path / "x.ckpt"))
    monkeypatch.undo()
    own = [n for n in seen_while_writing if n.startswith(".tmp-")]
    assert len(own) == 1 and re.fullmatch(rf"\.tmp-{os.getpid()}-.*~.*\.ckpt", own[0]), own
    assert os.listdir(tmp_path) == ["x.ckpt"]


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


class Tiny(LightningModule):
    """A small checkpoint to flip bits in: a 3x2 layer, Adam's state, the loop and RNG states."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Linear(3, 2)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.net(batch[0]).pow(2).mean())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def _small_checkpoint(tmp_path) -> tuple[str, bytes]:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Tiny(), data)
    path = str(tmp_path / "small.ckpt")
    trainer.save_checkpoint(path)
    return path, open(path, "rb").read()


def test_every_unreadable_file_is_a_value_error_naming_it(tmp_path) -> None:
    path, data = _small_checkpoint(tmp_path)
    load_checkpoint(path)
    g = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (len(data),), generator=g, dtype=torch.uint8).tolist())
    contents = {
        "one_byte": b"a", "empty": b"", "text": b"not a checkpoint\n", "noise": noise,
        "zip_header_then_noise": data[:64] + noise[64:], "noise_then_zip_end": noise[: len(data) // 2] + data[len(data) // 2:],
        **{f"truncated_{n}_of_16": data[: len(data) * n // 16] for n in range(1, 16)},
    }
    for name, content in contents.items():
        bad = str(tmp_path / f"{name}.ckpt")
        with open(bad, "wb") as f:
            f.write(content)
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            load_checkpoint(bad)


def test_bit_flips_are_refused_or_harmless(tmp_path) -> None:
    """Flip one bit at a time, every 101st bit of a small real checkpoint (30 kB: about 2400
    flips; an odd stride walks through every bit position of a byte): each flip is refused with
    a ValueError naming the file or gives back the same values. Never other values, silently."""
    path, data = _small_checkpoint(tmp_path)
    original = load_checkpoint(path)
    flipped = str(tmp_path / "flipped.ckpt")
    refused, harmless, silent = 0, 0, []
    for bit in range(0, 8 * len(data), 101):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with open(flipped, "wb") as f:
            f.write(damaged)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a warning (e.g. "loaded unverified") is no way out
                got = load_checkpoint(flipped)
        except ValueError as e:
            assert repr(flipped) in str(e), (bit, str(e))
            refused += 1
            continue
        try:
            assert_identical(got, original)
            harmless += 1
        except AssertionError as e:
            silent.append((bit, str(e)[:200]))
    assert not silent, f"{len(silent)} of {refused + harmless + len(silent)} flips loaded other values: {silent[:5]}"
    assert refused > harmless > 0  # most bytes are payload; some (e.g. zip comments, ids) do not matter


def test_checksum_mismatch_names_the_file(tmp_path) -> None:
    path, _ = _small_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)  # a plain dict, readable by torch alone
    assert ckpt["format"] == mopt_fast.core.saving.FORMAT and ckpt["checksum"].startswith("sha256:")
    ckpt["global_step"] += 1  # a value changed after the checksum was taken
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=re.escape(repr(path)) + ".*do not match the checksum"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(tmp_path) -> None:
    path, _ = _small_checkpoint(tmp_path)
    current = load_checkpoint(path)
    old = str(tmp_path / "v1.ckpt")
    torch.save({**current, "format": "mopt_fast.checkpoint/1"}, old)
    with pytest.warns(UserWarning, match="without a checksum"):
        loaded = load_checkpoint(old)
    assert_identical({**loaded, "format": current["format"]}, current)


def test_a_value_a_safe_load_cannot_read_is_refused_before_writing(tmp_path) -> None:
    class M(cases.minimal(LightningModule)):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = {"when": Evil()}

    torch.manual_seed(0)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(M(), cases.make_data()[0])
    with pytest.raises(TypeError, match=r"\['extra'\]\['when'\] is a .*Evil"):
        trainer.save_checkpoint(str(tmp_path / "x.ckpt"))
    assert os.listdir(tmp_path) == []


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
    with pytest.raises(KeyError, match="checkpoint contains only the model"):  # Lightning's error
        Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False).fit(M(), cases.make_data()[0], ckpt_path=light)


def test_last_ckpt_being_a_directory_is_refused_before_training(tmp_path) -> None:
    folder = tmp_path / "c"
    (folder / "last.ckpt").mkdir(parents=True)
    for save_last in (True, False):
        torch.manual_seed(0)
        model = cases.minimal(LightningModule)()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=str(folder), save_last=save_last)])
        with pytest.raises(IsADirectoryError, match=re.escape(repr(str(folder / "last.ckpt"))) + ".* a directory"):
            trainer.fit(model, *cases.make_data(), ckpt_path="last")
        assert trainer.global_step == 0
        assert_identical(dict(model.state_dict()), before)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(str(folder / "last.ckpt"))


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
        assert_identical(trainer.optimizers[0].state_dict(), ref.optimizers[0].state_dict(), str(path))
        assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == ref.lr_scheduler_configs[0].scheduler.state_dict()
        assert {k: v.item() for k, v in trainer.callback_metrics.items()} == {
            k: v.item() for k, v in ref.callback_metrics.items()}, path


# -- resume with persistent DataLoader workers -----------------------------------------------------
class Jittered(Dataset):
    """(x + noise, y): the noise is drawn in the DataLoader worker from its own torch RNG, as a
    random augmentation does; noise=0 draws nothing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, noise: float) -> None:
        self.x, self.y, self.noise = x, y, noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i] + self.noise * torch.randn(self.x.shape[1]) if self.noise else self.x[i]
        return x, self.y[i]


@pytest.mark.parametrize("noise", [0.0, 0.3], ids=["no_augmentation", "augmentation_in_workers"])
def test_resume_with_persistent_workers(noise: float, tmp_path) -> None:
    """Shuffled data, dropout, two persistent workers. Inside the first epoch (where the workers
    started) every checkpoint resumes exactly. From a later epoch, what the main process draws
    (shuffle order, dropout) resumes exactly, but the workers start anew and their random streams
    cannot continue: a warning says so, and without augmentation the resume is exact."""

    def fit(ckpt_path=None, callbacks=()):
        torch.manual_seed(0 if ckpt_path is None else 99)
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(96, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g)
        train = DataLoader(Jittered(x, y, noise), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True)
        model = cases.minimal(LightningModule)()
        trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, train, ckpt_path=ckpt_path)
        assert train._iterator is None  # the workers stop with the fit, as in Lightning
        warned = [str(w.message) for w in caught if "persistent_workers" in str(w.message)]
        return model, trainer, warned

    ref_model, ref, _ = fit(callbacks=(
        ModelCheckpoint(dirpath=str(tmp_path / "s"), every_n_train_steps=1, save_top_k=-1),
        ModelCheckpoint(dirpath=str(tmp_path / "e"), filename="end-{epoch}", save_top_k=-1),
    ))
    first_epoch = ["s/epoch=0-step=2.ckpt", "s/epoch=0-step=5.ckpt"]
    later = ["s/epoch=1-step=9.ckpt", "e/end-epoch=0.ckpt", "s/epoch=2-step=16.ckpt"]
    for name in first_epoch + later:
        model, trainer, warned = fit(ckpt_path=str(tmp_path / name))
        assert trainer.global_step == ref.global_step
        if name in first_epoch:
            assert not warned, (name, warned)
        else:
            assert len(warned) == 1 and "training DataLoader" in warned[0], (name, warned)
        if name in first_epoch or not noise:
            assert_identical(model.state_dict(), ref_model.state_dict(), name)
            assert_identical(trainer.optimizers[0].state_dict(), ref.optimizers[0].state_dict(), name)


def legacy_writer_arithmetic_matches(tmp_path) -> bool:
    """Whether this machine's CPU kernels reproduce the weights in tests/data/legacy-*.ckpt bit for
    bit: torch's CPU kernels pick vector code by instruction set (AVX2, AVX-512...), and fp32 sums
    taken in another order differ in the last bits, so a file written on another CPU holds
    weights this machine would not have computed."""
    import make_legacy_checkpoints as legacy

    legacy.main(str(tmp_path))
    data = os.path.join(os.path.dirname(__file__), "data")
    for kept in legacy.KEPT.values():
        here = torch.load(tmp_path / kept, weights_only=True)["state_dict"]
        stored = torch.load(os.path.join(data, kept), weights_only=True)["state_dict"]
        if any(not torch.equal(here[k], v) for k, v in stored.items()):
            return False
    return True


@pytest.fixture(scope="module")
def legacy_bitwise(tmp_path_factory) -> bool:
    return legacy_writer_arithmetic_matches(tmp_path_factory.mktemp("legacy"))


@pytest.mark.parametrize("name", ["legacy-batch", "legacy-mid-epoch-validation", "legacy-last-batch-validation"])
def test_legacy_checkpoints_resume_bitwise(name: str, legacy_bitwise: bool) -> None:
    """Checkpoints an earlier release wrote (tests/make_legacy_checkpoints.py, the flat "loops"
    entry from before the loops serialized themselves) still resume, to the weights, optimizer
    state, scheduler state and callback_metrics of the uninterrupted fit: bitwise on a machine
    whose arithmetic reproduces the file's weights; elsewhere to within float32 rounding of the
    part of the fit the other machine ran (a skipped or repeated batch moves the weights by a
    whole SGD step, orders of magnitude more)."""
    import make_legacy_checkpoints as legacy

    ref_model, ref = legacy.fit()
    path = os.path.join(os.path.dirname(__file__), "data", f"{name}.ckpt")
    model, trainer = legacy.fit(ckpt_path=path)
    assert trainer.global_step == ref.global_step == 18
    got_sched = trainer.lr_scheduler_configs[0].scheduler.state_dict()
    ref_sched = ref.lr_scheduler_configs[0].scheduler.state_dict()
    got_metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    ref_metrics = {k: v.item() for k, v in ref.callback_metrics.items()}
    if legacy_bitwise:
        for k, v in ref_model.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
        assert_identical(trainer.optimizers[0].state_dict(), ref.optimizers[0].state_dict())
        assert got_metrics == ref_metrics
        assert got_sched == ref_sched
        return
    torch.testing.assert_close(model.state_dict(), ref_model.state_dict(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trainer.optimizers[0].state_dict(), ref.optimizers[0].state_dict(),
                               rtol=1e-5, atol=1e-5)
    assert got_metrics.keys() == ref_metrics.keys()
    assert got_metrics == pytest.approx(ref_metrics, rel=1e-5, abs=1e-5)
    # ReduceLROnPlateau's `best` is a loss value: equal to float32 rounding; its counters exactly
    assert got_sched.keys() == ref_sched.keys()
    for k, v in ref_sched.items():
        assert got_sched[k] == (pytest.approx(v, rel=1e-5) if isinstance(v, float) else v), k
