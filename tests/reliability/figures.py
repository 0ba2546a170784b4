"""The drills' headline figures: printed when they are measured and repeated at the end of the run.

Why both: ``pytest -s`` and the captured-output sections of ``-rA``/junit show the print; with plain
``pytest -q`` the captured output of passing tests is hidden, so conftest's ``pytest_terminal_summary``
writes every recorded figure once more under a "reliability drills" heading.
"""

from __future__ import annotations

FIGURES: list[tuple[str, str]] = []


def record(drill: str, text: str) -> None:
    """Print ``text`` (one or more lines) under ``drill`` and keep it for the terminal summary."""
    print(f"\n[{drill}]\n{text}", flush=True)
    FIGURES.append((drill, text))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(x.rstrip() for x in [fmt.format(*header), line, *(fmt.format(*map(str, r)) for r in rows)])
