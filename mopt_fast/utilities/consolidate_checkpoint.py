"""A sharded checkpoint folder (``Trainer(strategy="fsdp")``) turned into one checkpoint file, in
one process, as Lightning's ``lightning.pytorch.utilities.consolidate_checkpoint``:

    python -m mopt_fast.utilities.consolidate_checkpoint path/to/epoch=1-step=8.ckpt [--output_file out.ckpt]

or ``mopt_fast.utilities.consolidate_checkpoint.consolidate_checkpoint(folder, output_file)``. The
file has the single-file layout (``state_dict`` and ``optimizer_states`` with full tensors, the
optimizer states keyed by parameter name), checksummed and written atomically: mopt_fast's Trainer
resumes it on one process (or, under FSDP, on any number), and Lightning's Trainer and
``load_from_checkpoint`` read it as one of its own. The whole checkpoint must fit in memory.
"""
from __future__ import annotations

import argparse
import os
import sys

from mopt_fast.core.saving import save_checkpoint_file
from mopt_fast.core.sharded_checkpoint import META_FILE, is_sharded_checkpoint, load_sharded_checkpoint

__all__ = ["consolidate_checkpoint"]


def consolidate_checkpoint(checkpoint_folder: str | os.PathLike, output_file: str | os.PathLike | None = None,
                           weights_only: bool = True) -> str:
    """Writes the sharded checkpoint in `checkpoint_folder` as one file, `output_file` (default:
    the folder's name with ".consolidated" added, Lightning's); returns its path. An output that
    exists already is refused, as Lightning refuses it (nothing is written). `weights_only`: how
    meta.pt is read (False for one with pickled hyperparameters, from a trusted source)."""
    folder = os.fspath(checkpoint_folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder!r} is not a folder: a sharded checkpoint is a folder of shards")
    if not is_sharded_checkpoint(folder):
        raise ValueError(f"{folder!r} is not a sharded checkpoint of mopt_fast or Lightning (it has no {META_FILE})")
    out = os.fspath(output_file) if output_file is not None else folder.rstrip(os.sep) + ".consolidated"
    if os.path.lexists(out):
        raise FileExistsError(f"{out!r} exists already: choose another output file or move it away")
    save_checkpoint_file(load_sharded_checkpoint(folder, weights_only), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Converts a sharded checkpoint folder (strategy='fsdp') into a single checkpoint file.")
    parser.add_argument("checkpoint_folder", help="the sharded checkpoint: a folder with meta.pt and DCP shards")
    parser.add_argument("--output_file", default=None,
                        help="the file to write (must not exist); default: the folder's name + '.consolidated'")
    args = parser.parse_args(argv)
    try:
        out = consolidate_checkpoint(args.checkpoint_folder, args.output_file)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
