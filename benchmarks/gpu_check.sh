#!/usr/bin/env bash
# The GPU run, for a GPU machine with no network (e.g. the H200 lent through the device tool):
# builds mopt_fast against the installed torch, runs the CUDA and Triton tests, runs the GPU
# benchmarks and prints the table. Everything is logged to LOGDIR.
#
#   benchmarks/gpu_check.sh LOGDIR
#
# PYTHON picks the interpreter (default python3). WHEELS=DIR installs missing test dependencies
# (hypothesis, sortedcontainers, attrs) from wheel files in DIR first. TORCH_CUDA_ARCH_LIST
# defaults to 9.0 here (the H200/H100); setup.py's own default builds 8.0 and 9.0.
# On a machine without a GPU the script still builds and runs the tests (the GPU ones skip) and
# says that nothing ran on a GPU: a dry run.
set -uo pipefail
logdir=${1:?usage: benchmarks/gpu_check.sh LOGDIR}
mkdir -p "$logdir"
logdir=$(cd "$logdir" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

{
  date -u
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  $py -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not installed"
} | tee "$logdir/env.txt"

if [ -n "${WHEELS:-}" ]; then
  $py -m pip install -q --no-index --no-deps "$WHEELS"/*.whl > "$logdir/wheels.log" 2>&1 || { cat "$logdir/wheels.log"; exit 1; }
fi

echo "== build (log: $logdir/build.log)"
start=$(date +%s)
if ! $py -m pip install --no-build-isolation --no-deps -v . > "$logdir/build.log" 2>&1; then
  tail -40 "$logdir/build.log"
  echo "gpu_check: build failed"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
# -P: import the installed package, not the source tree in the current directory.
$py -P -c "import mopt_fast; print(mopt_fast.build_info())" | tee -a "$logdir/env.txt"

echo "== tests (log: $logdir/tests.log)"
$py -P -m pytest tests -q -rs -p no:cacheprovider -k "cuda or triton or gpu" 2>&1 | tee "$logdir/tests.log" | tail -15
tests_status=${PIPESTATUS[0]}

echo "== benchmarks (log: $logdir/bench.log)"
$py -P -m pytest benchmarks/test_bench_gpu.py -q -p no:cacheprovider \
  --benchmark-json="$logdir/bench_gpu.json" > "$logdir/bench.log" 2>&1
bench_status=$?
tail -3 "$logdir/bench.log"
if [ -s "$logdir/bench_gpu.json" ]; then
  $py benchmarks/report.py "$logdir/bench_gpu.json" | tee "$logdir/table.txt"
  $py benchmarks/report.py "$logdir/bench_gpu.json" --markdown > "$logdir/table.md"
fi

if ! $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: DRY RUN — no CUDA device here, nothing ran on a GPU."
fi
echo "gpu_check: tests exit $tests_status, benchmarks exit $bench_status; logs in $logdir"
[ "$tests_status" -eq 0 ] || [ "$tests_status" -eq 5 ] || exit "$tests_status"
[ "$bench_status" -eq 0 ] || [ "$bench_status" -eq 5 ]
