"""The compiled part of mopt_fast: the package's metadata is in pyproject.toml ([project]); this file
only decides whether the wheel carries the C++ kernels compiled now, and lays out the package.

    pip install .                          # the kernels compile on first import (just in time)
    pip install --no-build-isolation .     # the kernels compile now (ahead of time)

Why two ways. The kernels are torch custom ops, and their binary is tied to the torch version it
was compiled against. torch is therefore deliberately *not* a build requirement: an isolated build
(pip's default) would install a fresh torch from the package index into a throw-away environment,
often a multi-GB CUDA build of another version, and the library compiled against it would not load
with the torch the user runs. So:

- When this script can import torch (`--no-build-isolation`, `make install`), it compiles
  mopt_fast._C against that torch, ahead of time, as before: CPU kernels, plus the CUDA kernels
  when torch is a CUDA build and nvcc is found.
- When it cannot (build isolation), it builds a pure-Python wheel. Both wheels carry the C++
  sources (mopt_fast/_csrc, from csrc/), and on the first import mopt_fast/_extension.py compiles
  the CPU kernels against the torch imported then (torch.utils.cpp_extension.load with ninja),
  into a cache per mopt_fast version, torch version, Python and ISA, under a lock so that
  processes importing at once (DDP ranks) compile once. The same happens when an ahead-of-time
  _C does not load (built against another torch). A failed compile leaves the pure-torch backend
  and a warning naming the cause and the fix. The just-in-time build leaves out the CUDA kernels
  (nvcc takes minutes for them): those come from the ahead-of-time build only.

Environment knobs of this build:
  MOPT_FAST_AOT=0     build the pure-Python wheel even when torch is importable.
  MOPT_FAST_CPU_ISA   auto (default) | default | avx2 | avx512 — the vector ISA of the CPU
                      kernels; auto picks avx2 when the build machine has it. The package refuses
                      to use kernels built for an ISA the running CPU lacks and falls back to torch.
  MOPT_FAST_DEBUG=1   build with -O0 -g.
  MOPT_FAST_CUDA      auto (default) | 0 — build the CUDA kernels when torch is a CUDA build and
                      nvcc is found; 0 builds the CPU kernels only.
  TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA kernels; default "8.0;9.0" (sm_80, sm_90).
"""
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _build_module():
    """mopt_fast/_build.py (sources and flags shared with the just-in-time build), loaded by its path:
    importing the mopt_fast package would import torch and load the kernels."""
    spec = importlib.util.spec_from_file_location("_mopt_fast_build", ROOT / "mopt_fast" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(paths) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def extension_build() -> dict:
    """setup() arguments of the ahead-of-time build of mopt_fast._C; {} for a pure-Python wheel."""
    if os.environ.get("MOPT_FAST_AOT") == "0":
        print("mopt_fast: MOPT_FAST_AOT=0: no compiled kernels in this wheel; they compile on first import")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print(
            "mopt_fast: torch is not importable in this build environment (pip's build isolation): "
            "building without compiled kernels; they compile on first import, against the torch "
            "installed then. `pip install --no-build-isolation .` compiles them now."
        )
        return {}
    build = _build_module()
    try:
        isa = build.cpu_isa()
    except ValueError as exc:
        sys.exit(f"mopt_fast: {exc}")
    csrc = ROOT / "csrc"
    sources = _rel(build.cpu_sources(csrc))
    debug = os.environ.get("MOPT_FAST_DEBUG") == "1"
    cxx = build.cxx_flags(isa, debug)
    args = {"cxx": cxx}
    ext = CppExtension
    if os.environ.get("MOPT_FAST_CUDA", "auto") != "0" and torch.version.cuda is not None and CUDA_HOME is not None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _rel(sorted((csrc / "cuda").glob("*.cu")) + sorted((csrc / "cuda").glob("*.cpp")))
        cxx.append("-DMOPT_FAST_WITH_CUDA")
        args["nvcc"] = (["-O0", "-g"] if debug else ["-O3"]) + ["-std=c++17", "-lineinfo"]
        ext = CUDAExtension
        print(f"mopt_fast: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    print(f"mopt_fast: building CPU kernels for ISA {isa} against torch {torch.__version__}")
    return {
        "ext_modules": [
            ext(
                name="mopt_fast._C",
                sources=sources,
                include_dirs=[str(p) for p in build.include_dirs(csrc, ROOT / "mopt_fast")],
                extra_compile_args=args,
                extra_link_args=build.LINK_FLAGS,
            )
        ],
        "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)},
    }


setup(
    # The layout, computed, which pyproject.toml's static discovery cannot say: triton_kernels/
    # ships as mopt_fast.triton_kernels (a top-level `triton_kernels` would clash with other
    # packages of that name), and csrc/ as mopt_fast/_csrc, the sources of the just-in-time build.
    packages=find_packages(include=["mopt_fast", "mopt_fast.*"])
    + ["mopt_fast.triton_kernels", "mopt_fast._csrc", "mopt_fast._csrc.cpu", "mopt_fast._csrc.cuda"],
    package_dir={"mopt_fast.triton_kernels": "triton_kernels", "mopt_fast._csrc": "csrc"},
    # ops.h: the op set's one declaration, included by the C++ sources, read by mopt_fast/_ops.py.
    package_data={
        "mopt_fast": ["ops.h", "_C.pyi"],
        "mopt_fast._csrc": ["*.cpp", "*.h"],
        "mopt_fast._csrc.cpu": ["*.cpp", "*.h"],
        "mopt_fast._csrc.cuda": ["*.cpp", "*.h", "*.cu", "*.cuh"],
    },
    zip_safe=False,
    **extension_build(),
)
