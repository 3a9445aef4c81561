"""Lightning's import path ``lightning.pytorch.trainer.states``: the state enums live in
`mopt_fast.core.states` (the module and the callbacks read them too)."""
from mopt_fast.core.states import LoopPoint, RunningStage, TrainerFn, TrainerState, TrainerStatus

__all__ = ["LoopPoint", "RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
