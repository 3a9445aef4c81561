"""The base class of the profilers (Lightning's `Profiler`): an action is ``start(name)`` ...
``stop(name)`` (``with profiler.profile(name):``); `summary` is the report, which `describe`
writes at the end of each stage to ``dirpath/<stage>-<filename>.txt`` when a filename is set, else
to the ``mopt_fast`` logger (INFO, rank zero), as Lightning writes it to its own."""
from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from mopt_fast.core.saving import is_url
from mopt_fast.exceptions import not_built

__all__ = ["Profiler"]

log = logging.getLogger(__name__)

# Characters that are not safe in a file name on some platform: each becomes "_".
_UNSAFE = re.compile(r"[\\/:*?\"<>|\n\r\t]")


def local_dir(path: str | Path) -> str:
    """`path` when it is a local folder; a remote (fsspec) URL, which Lightning's profilers write
    to, is not built here."""
    path = os.fspath(path)
    if is_url(path):
        raise not_built(f"a remote profiler dirpath ({path!r})", "profile to a local folder")
    return path


class Profiler(ABC):
    """Subclass it for a profiler of your own: `start` and `stop` are called around every action
    (hook, step, batch fetch) of a run the Trainer profiles."""

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._output_file: TextIO | None = None
        self._write_stream: Callable[[str], Any] | None = None
        self._local_rank: int | None = None
        self._stage: str | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start recording `action_name`."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop recording `action_name` (started before)."""

    def summary(self) -> str:
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Iterator[str]:
        """`action_name` recorded around the block (stopped also when it raises)."""
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    def _rank_zero_info(self, *args: Any, **kwargs: Any) -> None:
        if self._local_rank in (None, 0):
            log.info(*args, **kwargs)

    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt") -> str:
        """``<stage>-<filename>-<local rank>-<action>`` of the parts that are set, made safe."""
        parts = [p for p in (self._stage, self.filename) if p]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        if action_name is not None:
            parts.append(action_name)
        base = re.sub(r"_+", "_", _UNSAFE.sub("_", "-".join(parts))).strip()
        return (base or "profile") + extension

    def _prepare_streams(self) -> None:
        if self._write_stream is not None:
            return
        if self.filename and self.dirpath:
            local_dir(self.dirpath)
            os.makedirs(self.dirpath, exist_ok=True)
            self._output_file = open(os.path.join(self.dirpath, self._prepare_filename()), "a")  # noqa: SIM115
            self._write_stream = self._output_file.write
        else:
            self._write_stream = self._rank_zero_info

    def describe(self) -> None:
        """Writes the report (`summary`) and closes the file: the Trainer calls it at the end of
        each stage; it also works on a profiler used without a Trainer."""
        self._prepare_streams()
        summary = self.summary()
        if summary and self._write_stream is not None:
            self._write_stream(summary)
        if self._output_file is not None:
            self._output_file.flush()
        self.teardown(stage=self._stage)

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        stage = f"{self._stage.upper()} " if self._stage is not None else ""
        lines = [stage + "Profiler Report"]
        for action, value in stats.items():
            header = f"Profile stats for: {action}"
            if self._local_rank is not None:
                header += f" rank: {self._local_rank}"
            lines += [header, value]
        return os.linesep.join(lines)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """At the start of a stage (``"fit"``, ``"validate"``, ...): `log_dir` (the Trainer's) is
        the folder when none was given."""
        self._stage = stage
        self._local_rank = local_rank
        self.dirpath = self.dirpath or log_dir

    def teardown(self, stage: str | None) -> None:
        """Closes the report file."""
        self._write_stream = None
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None  # a file does not pickle

    def __del__(self) -> None:
        self.teardown(stage=self._stage)

    @property
    def local_rank(self) -> int:
        return 0 if self._local_rank is None else self._local_rank
