"""How the CPU kernels are compiled: the sources and flags that setup.py (the ahead-of-time build)
and mopt_fast._extension (the just-in-time build on first import) share, so that both build the
same library.

Standard library only: setup.py loads this file by its path, without importing torch or mopt_fast.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Compiler flags of each vector ISA the CPU kernels can be built for (MOPT_FAST_CPU_ISA).
ISA_FLAGS: dict[str, list[str]] = {
    "default": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
}

#: -fopenmp: at::parallel_for is inlined into our code and runs on OpenMP like torch's own ops.
LINK_FLAGS = ["-fopenmp"]


def host_cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa() -> str:
    """The ISA to build for: MOPT_FAST_CPU_ISA, or for `auto` (the default) AVX2 when this machine
    has it. AVX2 rather than AVX-512: these kernels are bandwidth-bound, and AVX2 builds run on
    every x86-64 CPU of the last decade. ValueError for an unknown name."""
    isa = os.environ.get("MOPT_FAST_CPU_ISA", "auto").lower()
    if isa == "auto":
        return "avx2" if {"avx2", "fma", "f16c"} <= host_cpu_flags() else "default"
    if isa not in ISA_FLAGS:
        raise ValueError(f"MOPT_FAST_CPU_ISA={isa!r}; choose auto, {', '.join(ISA_FLAGS)}")
    return isa


def cpu_sources(csrc: Path) -> list[Path]:
    """The C++ files of the module with the CPU kernels, under `csrc` (the repository's csrc/, or
    mopt_fast/_csrc/ in an install)."""
    return [csrc / "registry.cpp", csrc / "autograd.cpp", csrc / "module.cpp"] + sorted((csrc / "cpu").glob("*.cpp"))


def include_dirs(csrc: Path, package: Path) -> list[Path]:
    """csrc/ for its headers, and the package folder for mopt_fast/ops.h (the op set)."""
    return [csrc, package]


def cxx_flags(isa: str, debug: bool = False) -> list[str]:
    opt = ["-O0", "-g"] if debug else ["-O3"]
    return opt + ["-Wno-unknown-pragmas", "-fopenmp", f'-DMOPT_FAST_CPU_ISA="{isa}"'] + ISA_FLAGS[isa]
