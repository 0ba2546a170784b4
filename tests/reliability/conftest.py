"""The drills' figures, repeated at the end of the pytest session."""

from __future__ import annotations

from tests.launch.sbatch_helpers import cluster  # noqa: F401 - the fake SLURM fixture, for the sbatch drill

from .figures import FIGURES


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability drills")
    for drill, text in sorted(FIGURES, key=lambda f: f[0]):  # in drill order, whatever order tests ran in
        terminalreporter.write_line(f"[{drill}]")
        for line in text.splitlines():
            terminalreporter.write_line(f"  {line}")
