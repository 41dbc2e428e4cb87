"""pytest hooks for the benchmarks: print an images/s table after pytest-benchmark's own report."""

from __future__ import annotations

import sys


def pytest_terminal_summary(terminalreporter) -> None:
    module = sys.modules.get("bench_colour")
    results = getattr(module, "_RESULTS", None)
    if results:
        terminalreporter.write_sep("=", "sslbench.colour vs reference: images/s (median) and speed-up")
        terminalreporter.write_line(module.results_table(results))
