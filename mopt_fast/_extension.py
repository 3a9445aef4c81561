"""Loads the compiled kernels and says why when they cannot be used.

Importing the compiled module registers the C++ ops with torch (torch.ops.mopt_fast.*). It comes,
in this order, from

1. mopt_fast._C, compiled ahead of time by `pip install --no-build-isolation .` (setup.py);
2. else a just-in-time build of the CPU kernels (mopt_fast/_csrc, shipped in every wheel) against
   the torch imported now: torch.utils.cpp_extension.load with ninja, into a cache folder per
   mopt_fast version, torch version, Python, ISA and sources (MOPT_FAST_CACHE_DIR, default
   $XDG_CACHE_HOME/mopt_fast or ~/.cache/mopt_fast). torch's lock file in that folder makes
   processes that import at once (DDP ranks) compile once and all load the result; a later
   import loads the cached library without compiling or locking. MOPT_FAST_JIT=0 turns this off.

Without either — no compiler, an unsupported torch, kernels built for a vector ISA this CPU lacks —
everything still runs on the pure-torch backend: one warning names the cause and the fix, and
`mopt_fast.build_info()` says the same. MOPT_FAST_REQUIRE_COMPILED=1 turns the warning into an
ImportError with the same text.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shlex
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

import torch

from mopt_fast import _build
from mopt_fast._version import __version__

COMPILED: bool = False
WITH_CUDA: bool = False
CPU_ISA: str | None = None
REASON: str = ""
#: How the compiled kernels were obtained: "ahead-of-time" (mopt_fast._C), "jit", or None.
BUILD: str | None = None
#: The folder of the just-in-time build, when one was tried.
BUILD_DIR: str | None = None

#: The oldest torch the kernels compile against and the suite passed on (README).
MIN_TORCH = (2, 11)
#: The module name of the just-in-time build (TORCH_EXTENSION_NAME, csrc/module.cpp).
JIT_NAME = "mopt_fast_C"

PACKAGE = Path(__file__).parent

# torch.backends.cpu.get_cpu_capability() names, and what each ISA build needs of them.
_ISA_NEEDS = {"default": set(), "avx2": {"AVX2", "AVX512"}, "avx512": {"AVX512"}}

_AOT_HINT = "`pip install --no-build-isolation .` compiles them at install time"


class BuildError(Exception):
    """The just-in-time build cannot give kernels; the message names the cause and the fix."""


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def csrc_dir() -> Path | None:
    """The C++ sources: mopt_fast/_csrc in an install, csrc/ beside the package in a checkout."""
    for candidate in (PACKAGE / "_csrc", PACKAGE.parent / "csrc"):
        if (candidate / "module.cpp").is_file() and (PACKAGE / "ops.h").is_file():
            return candidate
    return None


def cache_root() -> Path:
    if _env("MOPT_FAST_CACHE_DIR"):
        return Path(_env("MOPT_FAST_CACHE_DIR"))
    return Path(_env("XDG_CACHE_HOME") or Path.home() / ".cache") / "mopt_fast"


def _torch_minor() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _find_ninja() -> str | None:
    """ninja on PATH; else the one the `ninja` package put beside this Python (a venv used without
    activating it), which is then put on PATH for torch's build."""
    if shutil.which("ninja"):
        return shutil.which("ninja")
    folders = [os.path.dirname(sys.executable)]
    try:
        import ninja

        folders.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in folders:
        if shutil.which("ninja", path=folder):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return shutil.which("ninja")
    return None


def _compiler() -> str:
    """The compiler torch's build runs: $CXX, else c++ (torch.utils.cpp_extension on Linux)."""
    return _env("CXX") or "c++"


def jit_plan() -> tuple[Path, list[Path], list[str], list[Path]]:
    """What the just-in-time build compiles: (cache folder, sources, cflags, include dirs).
    BuildError when it cannot: no sources, torch too old, an unknown MOPT_FAST_CPU_ISA."""
    csrc = csrc_dir()
    if csrc is None:
        raise BuildError(f"compiled kernels not built, and this install has no C++ sources to build them; {_AOT_HINT}")
    if _torch_minor() < MIN_TORCH:
        raise BuildError(
            f"torch {torch.__version__} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}, the oldest mopt_fast's kernels "
            f"support; install a newer one: pip install 'torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}'"
        )
    try:
        isa = _build.cpu_isa()
    except ValueError as exc:
        raise BuildError(f"{exc}, so the kernels were not compiled") from None
    sources = _build.cpu_sources(csrc)
    flags = _build.cxx_flags(isa)
    includes = _build.include_dirs(csrc, PACKAGE)
    digest = hashlib.sha256()
    for path in sources + sorted(csrc.glob("*.h")) + sorted((csrc / "cpu").glob("*.h")) + [PACKAGE / "ops.h"]:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(flags + [torch.version.git_version or ""]).encode())
    python = sys.implementation.cache_tag or f"py{sys.version_info[0]}{sys.version_info[1]}"
    key = f"{__version__}-torch{torch.__version__}-{python}-{isa}-{digest.hexdigest()[:12]}"
    return cache_root() / key, sources, flags, includes


def check_tools() -> None:
    """BuildError when the compiler or ninja that a build needs is missing."""
    compiler = _compiler()
    if shutil.which(shlex.split(compiler)[0]) is None:
        raise BuildError(
            f"no C++ compiler to build the kernels: `{compiler}` is not found (set CXX, or install one, "
            f"e.g. `apt-get install g++`), then import again; {_AOT_HINT}"
        )
    if _find_ninja() is None:
        raise BuildError("ninja, which builds the kernels, is not found; `pip install ninja`, then import again")


def _import_library(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(JIT_NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(log: str) -> str:
    """The first compiler error of a build log ("file:line: error: ..."), else its first line that
    names an error, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    noise = ("FAILED", "ninja:", "[", "RuntimeError: Error building extension")
    errors = [line for line in lines if "error:" in line] or [
        line for line in lines if "error" in line.lower() and not line.startswith(noise)
    ]
    line = errors[0] if errors else (lines or ["no output"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def jit_build() -> types.ModuleType:
    """The compiled module, from the cache or compiled now; BuildError naming the cause and fix."""
    global BUILD_DIR
    folder, sources, flags, includes = jit_plan()
    BUILD_DIR = str(folder)
    library = folder / f"{JIT_NAME}.so"
    done = folder / "built"
    if library.is_file() and done.is_file():  # compiled before: no compiler, no lock
        return _import_library(library)
    check_tools()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create the kernels' cache folder {folder} ({exc}); set MOPT_FAST_CACHE_DIR") from None
    if (folder / "lock").exists():
        print(f"mopt_fast: waiting for another process compiling the CPU kernels in {folder} "
              f"(if none is, delete {folder / 'lock'})", file=sys.stderr, flush=True)
    else:
        print(f"mopt_fast: compiling the CPU kernels for torch {torch.__version__} (first import only, about "
              f"1-2 min; cached in {folder})", file=sys.stderr, flush=True)
    from torch.utils import cpp_extension

    start = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=JIT_NAME,
            sources=[str(s) for s in sources],
            # The JIT build writes these flags into a ninja file unquoted; a shell reads them.
            extra_cflags=[shlex.quote(f) for f in flags],
            extra_ldflags=_build.LINK_FLAGS,
            extra_include_paths=[str(p) for p in includes],
            build_directory=str(folder),
            with_cuda=False,
            verbose=False,
        )
    except Exception as exc:  # a compiler error, a missing tool, a library that does not load
        log = folder / "build.log"
        text = f"{type(exc).__name__}: {exc}"
        try:
            log.write_text(text + "\n")
        except OSError:
            pass
        raise BuildError(
            f"compiling the CPU kernels against torch {torch.__version__} failed ({_summary(text)}; full log: {log}); "
            f"check the C++ compiler (`{_compiler()}`; set CXX for another) and that torch is a supported version "
            f"(2.11 to 2.14), then import again"
        ) from None
    assert isinstance(module, types.ModuleType)
    done.write_text(f"compiled in {time.perf_counter() - start:.1f} s\n")
    return module


def _load() -> None:
    global COMPILED, WITH_CUDA, CPU_ISA, REASON, BUILD
    try:
        compiled = importlib.import_module("mopt_fast._C")  # registers the ops
        BUILD = "ahead-of-time"
    except ImportError as exc:
        # Not built (a pure-Python wheel, a checkout), or built against another torch or Python: a
        # library that fails to load registered nothing, so the just-in-time build can.
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mopt_fast._C":
            why = "compiled kernels not built"
        else:
            why = f"the compiled kernels mopt_fast._C do not load ({exc})"
        if _env("MOPT_FAST_JIT", "1") == "0":
            REASON = f"{why}, and MOPT_FAST_JIT=0 turns off compiling them on import; {_AOT_HINT}"
            return
        try:
            compiled = jit_build()
        except BuildError as err:
            REASON = f"{why}; {err}"
            return
        sys.modules["mopt_fast._C"] = compiled  # `from mopt_fast import _C` finds it, as it finds the other
        BUILD = "jit"
    CPU_ISA = compiled.cpu_isa
    WITH_CUDA = bool(compiled.with_cuda)
    needs = _ISA_NEEDS.get(CPU_ISA or "", set())
    have = torch.backends.cpu.get_cpu_capability()
    if needs and have not in needs:
        REASON = (
            f"compiled CPU kernels were built for {CPU_ISA} but this CPU offers {have}; rebuild "
            "with MOPT_FAST_CPU_ISA=default"
        )
        return
    COMPILED = True


def report() -> None:
    """After _load: nothing when compiled; else the one warning, or with
    MOPT_FAST_REQUIRE_COMPILED=1 an ImportError with the same text."""
    if COMPILED:
        return
    if _env("MOPT_FAST_REQUIRE_COMPILED") == "1":
        raise ImportError(f"mopt_fast: {REASON}. (MOPT_FAST_REQUIRE_COMPILED=1: no fallback to the pure-torch backend)")
    warnings.warn(f"mopt_fast: {REASON}. Using the pure-torch backend.", stacklevel=3)


_load()
report()
