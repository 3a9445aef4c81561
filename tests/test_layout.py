"""The package map's layers, checked on the code: lower layers never import upper ones, and
``import mopt_fast`` for the kernels leaves the Lightning front unloaded."""
from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys

import mopt_fast

PACKAGE = pathlib.Path(mopt_fast.__file__).parent

# Bottom up; a module may import its own layer and those below it.
LAYERS = [
    ("kernels", ["_autograd", "_build", "_extension", "_ops", "_validate", "_version", "exceptions", "registry",
                 "torch_ops", "triton_kernels", "functional", "amp", "step_guard", "precision", "seed", "lightning"]),
    ("core", ["core", "plugins", "utilities"]),
    ("callbacks, loggers and profilers", ["callbacks", "loggers", "profilers"]),
    ("trainer", ["trainer"]),
    ("tuner and command line", ["tuner", "cli"]),  # the finders (callbacks/) and the CLI run the Trainer
]
LAYER_OF = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "mopt_fast" and len(parts) > 1 else None


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every mopt_fast module `path` imports, anywhere in it (TYPE_CHECKING blocks and function
    bodies too), with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("mopt_fast.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mopt_fast.")]
    return found


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__" or own not in LAYER_OF:
            continue
        for line, module in _imports(path):
            top = _top(module)
            if top in LAYER_OF and LAYER_OF[top] > LAYER_OF[own]:
                wrong.append(f"{rel}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer() -> None:
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__init__.py"}
    assert tops - {"_C"} <= set(LAYER_OF), sorted(tops - set(LAYER_OF))


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_import_mopt_fast_loads_the_kernels_only() -> None:
    """No Trainer, callbacks, loggers or core, and no torch.distributed module beyond those
    ``import torch`` itself loads; the front loads on first use."""
    torch_only = set(_loaded_after("import torch"))
    kernels = set(_loaded_after("import mopt_fast"))
    front = sorted(m for m in kernels if _top(m) in ("core", "plugins", "utilities", "callbacks", "loggers",
                                                      "profilers", "trainer", "tuner", "cli"))
    assert not front, front
    optional = sorted(m for m in kernels if m.split(".")[0] in ("lightning", "pytorch_lightning", "jsonargparse",
                                                                  "matplotlib", "comet_ml", "wandb", "mlflow", "fsspec"))
    assert not optional, optional
    extra_distributed = sorted(m for m in kernels - torch_only if m.startswith("torch.distributed"))
    assert not extra_distributed, extra_distributed
    with_front = set(_loaded_after("import mopt_fast\nmopt_fast.Trainer\nmopt_fast.callbacks.EarlyStopping"))
    assert {"mopt_fast.trainer.trainer", "mopt_fast.callbacks.early_stopping"} <= with_front


# A Trainer reached under any of these names, then an underscored member: `trainer._metrics`.
_PRIVATE_TRAINER_MEMBER = re.compile(r"\b(?:trainer|self\.trainer|self\._trainer|loop\.trainer)\._[a-z]\w*")


def test_only_trainer_py_touches_private_trainer_members() -> None:
    """The loops, the module, the optimizer wrapper and the callbacks go through the Trainer's
    public members (core/protocol.py); trainer/trainer.py alone uses its private ones."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "trainer" / "trainer.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in _PRIVATE_TRAINER_MEMBER.finditer(code):
                if not code[:match.start()].rstrip().endswith("mopt_fast."):  # a module path, not a member
                    wrong.append(f"{path.relative_to(PACKAGE)}:{number}: {match.group()}")
    assert not wrong, "\n".join(wrong)
