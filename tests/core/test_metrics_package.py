"""keyed_dispatch.metrics imports its libraries only when an exporter is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_the_package_imports_no_exporter_library() -> None:
    done = run_python(
        "import sys, keyed_dispatch, keyed_dispatch.metrics\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry')))\n"
        "assert not loaded, loaded\n"
        "assert keyed_dispatch.metrics.__all__ == ['PrometheusCollector', 'instrument_meter']\n"
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "library", "extra"),
    [
        ("PrometheusCollector", "prometheus_client", "prometheus"),
        ("instrument_meter", "opentelemetry", "otel"),
    ],
)
def test_a_missing_library_names_the_extra(name: str, library: str, extra: str) -> None:
    # A None entry in sys.modules makes the import fail as if not installed.
    code = f"import sys\nsys.modules[{library!r}] = None\nfrom keyed_dispatch.metrics import {name}\n"
    done = run_python(code)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: keyed_dispatch.metrics.{name} needs "), last
    assert f"pip install 'keyed_dispatch[{extra}]' (from a checkout: pip install -e '.[{extra}]')" in last
