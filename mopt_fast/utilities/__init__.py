"""Lightning's ``lightning.pytorch.utilities`` counterparts that users build themselves (core
layer: nothing here imports the callbacks, the loggers or the Trainer)."""
from mopt_fast.utilities.combined_loader import CombinedLoader

__all__ = ["CombinedLoader"]
