# mopt_fast: `make demo` and `make test` set up a fresh machine themselves.
#
#   make demo     venv + torch + mopt_fast (with its C++ kernels), then the main job
#   make test     same set-up, then the whole test suite
#   make bench    the benchmark comparison table (torch vs every mopt_fast backend)
#   make cmake-check   build the C++ op library with CMake as well (what CI checks)
#
# TORCH_SPEC picks the torch to install into .venv (default: the version we test with).

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SOURCES := setup.py $(shell find csrc mopt_fast -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py')

.PHONY: demo test bench install cmake-check clean

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

test: install
	MOPT_FAST_REQUIRE_COMPILED=1 $(VENV)/bin/pytest tests

bench: install
	mkdir -p out
	$(VENV)/bin/pytest benchmarks -q --benchmark-json=out/bench.json
	$(VPY) benchmarks/report.py out/bench.json

# Until the Trainer lands, the main job is the benchmark comparison table.
demo: bench

cmake-check: $(VENV)/.stamp-deps
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j2

clean:
	rm -rf build dist out *.egg-info $(VENV)/.stamp-install
