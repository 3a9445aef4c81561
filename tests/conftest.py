import os
import sys

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter. It must be chosen
# before triton compiles anything, hence here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import HealthCheck, settings

import mopt_fast

from helpers import ALL_BACKENDS, skip_unless_available

# Hypothesis: enough examples to find edge cases, few enough for a 2-core CI machine.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    info = mopt_fast.build_info()
    return [
        f"mopt_fast {info['version']} from {os.path.dirname(mopt_fast.__file__)}",
        f"compiled={info['compiled']} cpu_isa={info['cpu_isa']} backends={info['available_backends']}"
        + (f" ({info['reason']})" if info["reason"] else ""),
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Every backend; the unavailable ones are skipped with the reason printed. The backend stays
    forced for the whole test, across hypothesis examples too."""
    skip_unless_available(request.param)
    with mopt_fast.use_backend(request.param):
        yield request.param


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skips as one line per distinct reason: most are the same few reasons (a backend this machine
    lacks) repeated for every parametrization. pyproject's `-r` leaves `s` out for this; failures,
    errors and xfails are still listed one by one. With `-rs` / `-ra` given, pytest lists them itself."""
    if any(c in (config.option.reportchars or "") for c in "saA"):
        return
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return
    terminalreporter.write_sep("=", "skipped, by reason")
    for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        terminalreporter.write_line(f"skipped {n}: {reason}")


@pytest.fixture(autouse=True)
def _fresh_rich_console():
    """A test starts with no rich global console: RichProgressBar(console_kwargs=...) reconfigures
    that console (Lightning's does too), which would send later output, e.g. the results table
    Lightning and mopt_fast print after test(), to the stream an earlier test captured."""
    rich = sys.modules.get("rich")
    if rich is not None:
        rich._console = None
    yield
