"""Every test in tests/reliability/ is a drill marked ``reliability``; the drills' figures are repeated at the
end of the pytest session.

Why a hook and not a decorator per test: a drill added without its marker would slip into the fast tier
(``make test-fast`` deselects ``reliability``); marking by folder cannot be forgotten.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.launch.sbatch_helpers import cluster  # noqa: F401 - the fake SLURM fixture, for the sbatch drill

from .figures import FIGURES

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: the mark must be there when it is read
def pytest_collection_modifyitems(config, items) -> None:
    """Mark ``reliability`` every collected test of this folder (the hook sees the whole session's items)."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability drills")
    for drill, text in sorted(FIGURES, key=lambda f: f[0]):  # in drill order, whatever order tests ran in
        terminalreporter.write_line(f"[{drill}]")
        for line in text.splitlines():
            terminalreporter.write_line(f"  {line}")
