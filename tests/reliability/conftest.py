"""Drill fixtures: one CPU thread per process, and the drills' figures at the end of the session."""

from __future__ import annotations

import pytest
import torch

from .figures import FIGURES


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs use one intra-op thread: on a small shared machine more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability drills")
    for drill, text in sorted(FIGURES, key=lambda f: f[0]):  # in drill order, whatever order tests ran in
        terminalreporter.write_line(f"[{drill}]")
        for line in text.splitlines():
            terminalreporter.write_line(f"  {line}")
