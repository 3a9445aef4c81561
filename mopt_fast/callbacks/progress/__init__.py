"""Progress bars: the base class, tqdm's (the default) and rich's."""
from mopt_fast.callbacks.progress.progress_bar import ProgressBar
from mopt_fast.callbacks.progress.rich_progress import RichProgressBar, RichProgressBarTheme
from mopt_fast.callbacks.progress.tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "RichProgressBar", "RichProgressBarTheme", "TQDMProgressBar"]
