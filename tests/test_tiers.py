"""The two test tiers: ``make test`` (and CI) run every test, ``make test-fast`` only the quick tier.

Why: the crash drills and end-to-end runs take most of the suite's time; a developer runs the quick tier
while editing, and nothing may make the full run (the one CI trusts) quietly skip a tier. The fast tier's
marker expression is read from the Makefile, so the check follows whatever the Makefile says.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESELECTING = ("-m", "-k", "--deselect", "--ignore", "--ignore-glob", "--lf", "--last-failed")


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=[ \t]*(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"no {name} in the Makefile"
    return match.group(1).strip()


def recipe(target: str) -> list[str]:
    """The command lines of a Makefile target."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"no target {target} in the Makefile"
    return [line.strip() for line in match.group(1).splitlines()]


def deselecting(args: list[str]) -> list[str]:
    return [a for a in args if a.split("=")[0] in DESELECTING or (a.startswith("-m") and len(a) > 2)]


def test_make_test_and_ci_deselect_nothing():
    (test,) = recipe("test")
    assert test == "$(PY) -m pytest -q $(PYTEST_ARGS)", test
    assert makefile_variable("PYTEST_ARGS") == ""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    addopts = shlex.split(cfg["tool:pytest"].get("addopts", ""))
    assert not deselecting(addopts), f"setup.cfg's addopts deselect tests: {addopts}"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci, "CI no longer runs `make test`"


def test_the_fast_tier_leaves_out_the_drills_and_keeps_the_rest():
    (fast,) = recipe("test-fast")
    assert fast == '$(PY) -m pytest -q -m "$(FAST_TIER)" $(PYTEST_ARGS)', fast
    expression = makefile_variable("FAST_TIER")
    for marker in ("slow", "reliability", "slurm"):
        assert f"not {marker}" in expression, expression
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", expression], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    selected = [line for line in done.stdout.splitlines() if "::" in line]
    counts = re.search(r"^(\d+)/(\d+) tests collected \((\d+) deselected\)", done.stdout, re.MULTILINE)
    assert counts, done.stdout[-2000:]
    chosen, total, dropped = map(int, counts.groups())
    assert chosen == len(selected) and chosen + dropped == total
    assert 0 < chosen < total
    drills = [n for n in selected if n.startswith("tests/reliability/")]
    assert not drills, f"drills in the fast tier: {drills[:5]}"
    assert "tests/test_tiers.py::test_the_fast_tier_leaves_out_the_drills_and_keeps_the_rest" in selected
    drill_functions = sum(len(re.findall(r"^def test_", p.read_text(), re.MULTILINE))
                          for p in (REPO / "tests" / "reliability").glob("test_*.py"))
    assert drill_functions and dropped >= drill_functions, (dropped, drill_functions)
