# mopt_fast: `make demo` and `make test` set up a fresh machine themselves.
#
#   make demo     venv + torch + mopt_fast (with its C++ kernels), then the main job: the guide's
#                 GAN trained by mopt_fast.Trainer (progress bar, out/demo/gan_2d.png) and its
#                 per-step time against a hand-written loop and Lightning
#   make test     same set-up, then the whole test suite
#   make bench    the benchmark comparison table (torch vs every mopt_fast backend)
#   make docs     the documentation (docs/, Sphinx + MyST) into build/docs/html, strict: a dead link
#                 or a page in no toctree fails it; its own venv .venv-docs (requirements-docs.txt)
#   make cmake-check   build the C++ op library and the CUDA kernels (sm_80, sm_90) with CMake,
#                      and syntax-check the CUDA binding against torch's headers (what CI checks)
#   make lint     ruff (pyflakes, isort, bugbear, pyupgrade), mypy and clang-format, as CI runs them
#   make format   apply ruff's fixes and clang-format
#
# TORCH_SPEC picks the torch to install into .venv (default: the version we test with).

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
CXX_SOURCES := $(shell find csrc mopt_fast -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
SOURCES := setup.py pyproject.toml $(shell find csrc mopt_fast triton_kernels -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py')

.PHONY: demo test bench docs install cmake-check lint format clean

$(VENV)/.stamp-deps: requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

# --no-build-isolation: compile against the torch in .venv (see setup.py for why).
$(VENV)/.stamp-install: $(VENV)/.stamp-deps $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation .
	touch $@

install: $(VENV)/.stamp-install

# Child processes that tests start from the repository root with `python -c` import the source
# tree, which has no _C: the first import compiles its kernels into the cache (~/.cache/mopt_fast),
# here once, rather than inside some test's time-out.
test: install
	MOPT_FAST_REQUIRE_COMPILED=1 $(VPY) -c "import mopt_fast; print('mopt_fast from the tree:', mopt_fast.build_info()['build'])"
	MOPT_FAST_REQUIRE_COMPILED=1 $(VENV)/bin/pytest tests

bench: install
	mkdir -p out
	$(VENV)/bin/pytest benchmarks -q --benchmark-json=out/bench.json
	$(VPY) benchmarks/report.py out/bench.json

demo: install
	$(VPY) examples/gan_2d.py --out out/demo

# The docs need no torch: their own small venv, every version pinned in requirements-docs.txt.
DOCS_VENV := .venv-docs
$(DOCS_VENV)/.stamp-docs: requirements-docs.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q -r requirements-docs.txt
	touch $@

# -W --keep-going: every warning (a dead link or heading anchor, a page in no toctree) is listed
# and fails the build. check_strict.sh then proves that such breakage does fail it.
docs: $(DOCS_VENV)/.stamp-docs
	rm -rf build/docs
	$(DOCS_VENV)/bin/sphinx-build -W --keep-going -q -b html docs build/docs/html
	bash docs/check_strict.sh $(DOCS_VENV)/bin/sphinx-build

lint: $(VENV)/.stamp-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(VENV)/.stamp-deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

NVCC ?= $(shell command -v nvcc)
TORCH_INCLUDE = $$($(VPY) -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')
# nvcc's own include flags (it may be a wrapper script, so ask it rather than resolve its path).
CUDA_INCLUDE = $$($(NVCC) --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="\([^"]*\)".*/\1/p' | head -1)

cmake-check: $(VENV)/.stamp-deps
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DMOPT_FAST_CUDA_KERNELS=$(if $(NVCC),ON,OFF) \
	  -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j2
	# The CMake-built library registers working ops on its own (no mopt_fast import).
	$(VPY) -c "import torch; torch.ops.load_library('build/cmake/libmopt_fast_ops.so'); \
	  t = torch.randn(100000); n, _ = torch.ops.mopt_fast.norm([t], 2.0, False); \
	  assert abs(n.item() - t.double().norm().item()) < 1e-5 * n.item(), n; print('libmopt_fast_ops.so: ok')"
ifneq ($(NVCC),)
	# The CUDA binding needs a CUDA torch to build; here its syntax is checked against the CPU
	# wheel's headers, plus the one generated c10 header that wheel lacks.
	mkdir -p build/cuda-shim/c10/cuda/impl
	echo '#define C10_CUDA_BUILD_SHARED_LIBS' > build/cuda-shim/c10/cuda/impl/cuda_cmake_macros.h
	$(CXX) -std=c++20 -fsyntax-only -Wall -Werror -Wno-unknown-pragmas -Icsrc -Ibuild/cuda-shim \
	  $(TORCH_INCLUDE) $(CUDA_INCLUDE) csrc/cuda/binding.cpp
endif

clean:
	rm -rf build dist out *.egg-info $(VENV)/.stamp-install
