"""``Trainer(profiler=...)`` and ``mopt_fast.profilers`` side by side with Lightning's, on the same
seed: the same actions in the same start/stop order (a profiler of one's own), the same action
names and call counts (SimpleProfiler), the same report files and sections, the PyTorch profiler's
trace and table, the same errors, and weights that profiling does not change."""
from __future__ import annotations

import importlib
import logging
import os
import re
import warnings
from typing import Any

import pytest
import torch

import lightning_cases as cases
from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")

FRAMEWORKS = ("lightning", "mopt_fast")


def package(framework: str, name: str) -> Any:
    return importlib.import_module(f"{'lightning.pytorch' if framework == 'lightning' else 'mopt_fast'}.{name}")


def recording_profiler(framework: str) -> Any:
    """A Profiler subclass that keeps every start, stop, setup and describe call."""
    base = package(framework, "profilers").Profiler

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, ...]] = []

        def start(self, action_name: str) -> None:
            self.events.append(("start", action_name))

        def stop(self, action_name: str) -> None:
            self.events.append(("stop", action_name))

        def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
            self.events.append(("setup", str(stage)))
            super().setup(stage, local_rank, log_dir)

        def describe(self) -> None:
            self.events.append(("describe",))
            super().describe()

    return Recording()


def with_eval_steps(case: Any) -> Any:
    """`case` with test and predict steps and an overridden batch-transfer hook."""
    def make(LM: type) -> type:
        class WithEval(case(LM)):  # type: ignore[misc, valid-type]
            def test_step(self, batch: Any, batch_idx: int) -> None:
                self.log("test_loss", self.compute_loss(batch))

            def predict_step(self, batch: Any, batch_idx: int) -> Any:
                return self.net(batch[0])

            def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
                return batch

        return WithEval

    return make


def run_all_stages(framework: str, case: Any, profiler: Any, root: str, **trainer_kwargs: Any) -> Any:
    """fit, validate, test and predict of `case` through a data module, with a callback of one's own."""
    LM, Trainer = cases.frameworks(framework)
    DataModule = importlib.import_module("lightning.pytorch" if framework == "lightning" else "mopt_fast"
                                         ).LightningDataModule
    Callback = package(framework, "callbacks").Callback
    train, val = cases.make_data()

    class Data(DataModule):  # type: ignore[misc, valid-type]
        def train_dataloader(self) -> Any:
            return train

        def val_dataloader(self) -> Any:
            return val

        def test_dataloader(self) -> Any:
            return val

        def predict_dataloader(self) -> Any:
            return val

    class Watcher(Callback):  # type: ignore[misc, valid-type]
        def on_train_batch_end(self, *args: Any) -> None:
            pass

    torch.manual_seed(0)
    model = with_eval_steps(case)(LM)()
    kwargs = dict(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=root, profiler=profiler, limit_train_batches=4,
                  limit_val_batches=2, callbacks=[Watcher()])
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)
    data = Data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
        trainer.validate(model, datamodule=data, verbose=False)
        trainer.test(model, datamodule=data, verbose=False)
        trainer.predict(model, datamodule=data)
    return trainer, model


@pytest.mark.parametrize("case,trainer_kwargs", [
    (cases.automatic(), {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5}),
    (cases.minimal, {}),
], ids=["automatic_accumulate_clip", "manual"])
def test_custom_profiler_gets_lightning_start_stop_sequence(tmp_path, case, trainer_kwargs) -> None:
    events = {}
    for fw in FRAMEWORKS:
        profiler = recording_profiler(fw)
        run_all_stages(fw, case, profiler, str(tmp_path / fw), **trainer_kwargs)
        events[fw] = profiler.events
    assert events["mopt_fast"] == events["lightning"]
    assert ("start", "run_training_batch") in events["mopt_fast"]


def test_simple_profiler_records_lightning_actions_and_writes_the_same_files(tmp_path) -> None:
    counts, files, trainers, reports = {}, {}, {}, {}
    for fw in FRAMEWORKS:
        root = tmp_path / fw
        profiler = package(fw, "profilers").SimpleProfiler(filename="perf")
        trainers[fw], _ = run_all_stages(fw, cases.automatic(), profiler, str(root))
        counts[fw] = {name: len(d) for name, d in profiler.recorded_durations.items()}
        files[fw] = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
        report = (root / "fit-perf.txt").read_text()
        reports[fw] = sorted(re.findall(r"^\|  (\S.*?)\s*\t\|  \S+\s*\t\|  (\d+)", report, re.M))
    assert counts["mopt_fast"] == counts["lightning"]
    assert "[_TrainingEpochLoop].train_dataloader_next" in counts["mopt_fast"]
    assert files["mopt_fast"] == files["lightning"] == [
        "fit-perf.txt", "predict-perf.txt", "test-perf.txt", "validate-perf.txt"]
    assert reports["mopt_fast"] == reports["lightning"] and len(reports["mopt_fast"]) > 20
    assert type(trainers["mopt_fast"].profiler).__name__ == "SimpleProfiler"


def test_advanced_profiler_report_has_lightning_sections(tmp_path) -> None:
    sections = {}
    for fw in FRAMEWORKS:
        profiler = package(fw, "profilers").AdvancedProfiler(dirpath=str(tmp_path / fw), filename="adv")
        cases.run(fw, cases.automatic(), profiler=profiler, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
        report = (tmp_path / fw / "fit-adv.txt").read_text()
        assert "function calls" in report  # pstats' table under each section
        sections[fw] = sorted(re.findall(r"^Profile stats for: (.*)$", report, re.M))
    assert sections["mopt_fast"] == sections["lightning"]
    assert "[Strategy]SingleDeviceStrategy.training_step" in sections["mopt_fast"]


def test_pytorch_profiler_writes_trace_and_summary(tmp_path) -> None:
    written, caught = {}, {}
    for fw in FRAMEWORKS:
        profiler = package(fw, "profilers").PyTorchProfiler(filename="pt")
        logger = package(fw, "loggers").CSVLogger(str(tmp_path / fw))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            cases.run(fw, cases.automatic(), profiler=profiler, logger=logger, max_epochs=1, limit_train_batches=3,
                      limit_val_batches=0)
        caught[fw] = sorted({str(w.message) for w in seen if "Profiler" in str(w.message)})
        log_dir = tmp_path / fw / "lightning_logs" / "version_0"
        names = sorted(os.listdir(log_dir))
        # a trace per recorded window: <stage>-<filename>-<action>.<id>.pt.trace.json
        written[fw] = sorted(re.sub(r"\.\d+\.pt\.trace\.json$", ".pt.trace.json", n) for n in names)
        summary = (log_dir / "fit-pt.txt").read_text()
        assert "FIT Profiler Report" in summary and "Profile stats for: records" in summary
        assert "Self CPU time total" in summary
        trace = next(n for n in names if n.startswith("fit-pt-[Strategy]SingleDeviceStrategy.training_step"))
        text = (log_dir / trace).read_text()
        assert '"[pl][profile][Strategy]SingleDeviceStrategy.training_step"' in text  # the action's range
        assert '"[pl][module]torch.nn.modules.linear.Linear: net.0"' in text  # a submodule's forward
    assert written["mopt_fast"] == written["lightning"]
    assert "fit-pt-[Strategy]SingleDeviceStrategy.training_step.pt.trace.json" in written["mopt_fast"]
    assert caught["mopt_fast"] == caught["lightning"]


def test_report_goes_to_the_log_without_a_filename(tmp_path, caplog) -> None:
    reports = {}
    for fw in FRAMEWORKS:
        profiler = package(fw, "profilers").SimpleProfiler()
        name = "lightning.pytorch.profilers.profiler" if fw == "lightning" else "mopt_fast.profilers.profiler"
        caplog.clear()
        (tmp_path / fw).mkdir()
        logging.getLogger(name).setLevel(logging.INFO)  # the test helpers quiet Lightning's loggers
        with caplog.at_level(logging.INFO, logger=name):
            cases.run(fw, cases.automatic(), profiler=profiler, max_epochs=1, limit_train_batches=2,
                      limit_val_batches=1, default_root_dir=str(tmp_path / fw))
        reports[fw] = [r.getMessage().splitlines()[0] for r in caplog.records if r.name == name]
        assert not os.listdir(tmp_path / fw)  # nothing written
    assert reports["mopt_fast"] == reports["lightning"] == ["FIT Profiler Report"]


@pytest.mark.parametrize("value", ["fancy", 3.0])
def test_bad_profiler_argument_raises_lightnings_error(value) -> None:
    errors = {}
    for fw in FRAMEWORKS:
        _, Trainer = cases.frameworks(fw)
        with pytest.raises(Exception) as info:
            Trainer(accelerator="cpu", logger=False, max_epochs=1, profiler=value).fit(
                cases.automatic()(cases.frameworks(fw)[0])(), cases.make_data()[0])
        errors[fw] = (type(info.value).__name__, str(info.value))
    assert errors["mopt_fast"] == errors["lightning"]


def test_profiler_names_and_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a broken remote-path check would write under ./s3:
    import mopt_fast
    from mopt_fast.exceptions import NotBuiltError
    from mopt_fast.profilers import PassThroughProfiler, SimpleProfiler

    assert type(mopt_fast.Trainer(accelerator="cpu", logger=False).profiler) is PassThroughProfiler
    assert isinstance(mopt_fast.Trainer(accelerator="cpu", logger=False, profiler="Simple").profiler, SimpleProfiler)
    with pytest.raises(NotBuiltError, match="XLAProfiler"):
        mopt_fast.Trainer(accelerator="cpu", logger=False, profiler="xla")
    with pytest.raises(NotBuiltError, match="XLAProfiler"):
        from mopt_fast.profilers import XLAProfiler  # noqa: F401
    remote = SimpleProfiler(dirpath="s3://bucket/profiles", filename="perf")
    with remote.profile("work"):
        pass
    with pytest.raises(NotBuiltError, match="remote profiler dirpath"):
        remote.describe()
    assert set(package("mopt_fast", "profilers").__all__) | {"XLAProfiler"} == set(
        package("lightning", "profilers").__all__)


def test_profiling_leaves_the_weights_unchanged() -> None:
    plain = cases.run("mopt_fast", cases.automatic(), data=cases.make_data(), max_epochs=2)
    states = {}
    for fw in FRAMEWORKS:
        profiler = package(fw, "profilers").SimpleProfiler()
        states[fw] = cases.run(fw, cases.automatic(), profiler=profiler, max_epochs=2)["state"]
    for key, value in plain["state"].items():
        assert torch.equal(states["mopt_fast"][key], value), key
        assert torch.equal(states["lightning"][key], value), key


def test_profiler_used_without_a_trainer_describes_itself(tmp_path) -> None:
    outputs = {}
    for fw in FRAMEWORKS:
        profiler = package(fw, "profilers").SimpleProfiler(dirpath=str(tmp_path / fw), filename="own")
        for _ in range(3):
            with profiler.profile("work"):
                torch.randn(64, 64) @ torch.randn(64, 64)
        with pytest.raises(ValueError) as info:
            profiler.stop("never started")
        profiler.describe()
        outputs[fw] = (sorted(os.listdir(tmp_path / fw)), len(profiler.recorded_durations["work"]), str(info.value))
    assert outputs["mopt_fast"] == outputs["lightning"]



def fit_with_checkpoints(framework: str, root: str, epochs: int, ckpt_path: str | None) -> dict[str, int]:
    """The SimpleProfiler's call counts of a fit with ModelCheckpoint (last.ckpt too) and EarlyStopping."""
    LM, Trainer = cases.frameworks(framework)
    callbacks = package(framework, "callbacks")
    profiler = package(framework, "profilers").SimpleProfiler()
    train, val = cases.make_data()
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, profiler=profiler, limit_train_batches=3,
                      limit_val_batches=2, callbacks=[callbacks.ModelCheckpoint(dirpath=root, save_last=True),
                                                      callbacks.EarlyStopping("val_loss")])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(cases.automatic()(LM)(), train, val, ckpt_path=ckpt_path)
    return {name: len(d) for name, d in profiler.recorded_durations.items()}


def test_simple_profiler_records_lightning_actions_when_checkpointing_and_resuming(tmp_path) -> None:
    """The monitoring callbacks last on on_train_epoch_end, checkpoint saves (`save_checkpoint`,
    every callback's on_save_checkpoint), then a resumed fit (every callback's on_load_checkpoint)."""
    counts = {}
    for fw in FRAMEWORKS:
        root = str(tmp_path / fw)
        counts[fw] = (fit_with_checkpoints(fw, root, 1, None),
                      fit_with_checkpoints(fw, root, 2, os.path.join(root, "last.ckpt")))
    assert counts["mopt_fast"] == counts["lightning"]
    assert counts["mopt_fast"][0]["save_checkpoint"] == 2  # the epoch's and last.ckpt
    assert any(name.endswith("on_load_checkpoint") for name in counts["mopt_fast"][1])


def test_custom_profiler_sequence_when_a_step_fails(tmp_path) -> None:
    """A failing training step: the actions around it stop, then every callback's on_exception."""
    def failing(LM: type) -> type:
        class Failing(cases.automatic()(LM)):  # type: ignore[misc, valid-type]
            def training_step(self, batch: Any, batch_idx: int) -> Any:
                if batch_idx == 2:
                    raise RuntimeError("boom")
                return super().training_step(batch, batch_idx)

        return Failing

    events = {}
    for fw in FRAMEWORKS:
        profiler = recording_profiler(fw)
        with pytest.raises(RuntimeError, match="boom"):
            run_all_stages(fw, failing, profiler, str(tmp_path / fw), enable_checkpointing=True)
        events[fw] = profiler.events
    assert events["mopt_fast"] == events["lightning"]
    assert any(e[-1].endswith(".on_exception") for e in events["mopt_fast"])


def test_lightnings_own_profilers_run_in_our_trainer() -> None:
    """A script that keeps ``lightning.pytorch.profilers``: the same actions in our Trainer; its
    PassThroughProfiler is the plain (unprofiled) run."""
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    counts = {}
    for fw in FRAMEWORKS:
        profiler = SimpleProfiler()
        cases.run(fw, cases.automatic(), profiler=profiler, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
        counts[fw] = {name: len(d) for name, d in profiler.recorded_durations.items()}
    assert counts["mopt_fast"] == counts["lightning"]
    trainer = cases.run("mopt_fast", cases.automatic(), profiler=PassThroughProfiler(), max_epochs=1,
                        limit_train_batches=2, limit_val_batches=1)["trainer"]
    assert trainer.hooks.profiler is None
