"""The Trainer-level Lightning surface, side by side with Lightning 2.6's own Trainer: each feature
runs under both on the same seed and data, and must end with the same weights (bitwise), metrics,
returned results, hooks and files."""
from __future__ import annotations

import torch

import mopt_fast
from mopt_fast.trainer import _protocol
from mopt_fast.trainer.states import LoopPoint, RunningStage, TrainerFn, TrainerStatus

import lightning_cases as cases
from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")


# -- the Trainer's seams and state ------------------------------------------------------------------
def test_trainer_implements_the_protocols_other_parts_use() -> None:
    """What the module, the optimizer wrapper, the metric store, ModelCheckpoint and the strategies
    ask of the Trainer (_protocol.py) is there on a Trainer, before and after a fit."""
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False)
    protocols = [_protocol.ModuleTrainer, _protocol.MetricsTrainer, _protocol.OptimizerTrainer,
                 _protocol.CheckpointTrainer, _protocol.StrategyTrainer, _protocol.TrainerProtocol]
    for proto in protocols:
        assert isinstance(trainer, proto), proto.__name__
    torch.manual_seed(0)
    trainer.fit(cases.minimal(mopt_fast.LightningModule)(), cases.make_data()[0])
    for proto in protocols:
        assert isinstance(trainer, proto), proto.__name__


def test_state_enums_compare_as_lightnings() -> None:
    from lightning.pytorch.trainer import states as pl_states

    for ours, theirs in ((TrainerFn, pl_states.TrainerFn), (RunningStage, pl_states.RunningStage),
                         (TrainerStatus, pl_states.TrainerStatus)):
        assert [m.value for m in ours] == [m.value for m in theirs]
        for m in ours:
            assert m == m.value and m == m.value.upper() and hash(m) == hash(theirs(m.value))
            assert str(m) == str(theirs(m.value))
    assert RunningStage.SANITY_CHECKING.dataloader_prefix == "val" and RunningStage.TESTING.evaluating
    assert {LoopPoint.BATCH: 1}["batch"] == 1  # usable where plain strings were


def test_state_during_and_after_fit_as_lightning() -> None:
    """trainer.state (fn, stage, status) and the stage flags in the hooks and after fit."""
    def make(LM):
        class M(cases.minimal(LM)):
            def on_train_batch_start(self, batch, batch_idx):
                self.recorded.append(("batch", self.trainer.state.fn, self.trainer.state.stage,
                                      self.trainer.state.status, self.trainer.training))

            def on_validation_start(self):
                t = self.trainer
                self.recorded.append(("val", t.state.fn, t.state.stage, t.validating, t.sanity_checking, t.evaluating))

        return M

    ref = cases.run("lightning", make, max_epochs=1)
    got = cases.run("mopt_fast", make, max_epochs=1)
    norm = [tuple(str(x) if not isinstance(x, bool) else x for x in r) for r in ref["recorded"]]
    assert [tuple(str(x) if not isinstance(x, bool) else x for x in r) for r in got["recorded"]] == norm
    for key in ("fn", "stage", "status"):
        assert str(getattr(got["trainer"].state, key)) == str(getattr(ref["trainer"].state, key)), key
    assert got["trainer"].interrupted is ref["trainer"].interrupted is False
