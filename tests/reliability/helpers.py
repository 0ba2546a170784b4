"""Shared pieces of the reliability drills: the tiny run, CLI subprocesses and their error checks.

Why subprocesses: a kill, a DataLoader worker or a dead rank only behave as in production in a separate
process, and "no traceback, one ``error:`` line, exit 2" is a property of the real command line.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.tiny import TINY

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAULT_CLI = HERE / "fault_cli.py"


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``pretrain`` arguments of the tiny CPU run (tests/tiny.py's TINY overrides)."""
    return ["pretrain", *TINY, f"data.path={data}", f"output_dir={out}", *extra]


def trainer_checkpoint(data: Path, out: Path, *extra: str) -> Path:
    """A real pretraining checkpoint (trainer state at step 0) of the tiny run with ``extra`` overrides."""
    from container_ssl.config import load_config
    from container_ssl.ssl.trainer import DinoTrainer

    cfg = load_config(overrides=TINY + [f"data.path={data}", f"output_dir={out}", "data.subset=32", *extra])
    DinoTrainer(cfg).save(0, 0)
    return out / "checkpoint.pt"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one thread (a loaded 2-core box crawls with more), unbuffered."""
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CONTAINER_SSL_FAULT_NAN_AT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli_command(args: list[str], fault: bool = False) -> list[str]:
    """``python -m container_ssl ARGS``, or the same through the fault-injecting wrapper."""
    if fault:
        return [sys.executable, str(FAULT_CLI), *args]
    return [sys.executable, "-m", "container_ssl", *args]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_cli(args: list[str], fault: bool = False, timeout: float = 300, **env: str) -> Result:
    """Run ``python -m container_ssl ARGS`` (or the fault-injecting wrapper) to completion."""
    proc = subprocess.run(cli_command(args, fault), capture_output=True, text=True, timeout=timeout, check=False,
                          env=cli_env(**env), cwd=REPO)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(stderr: str, returncode: int) -> str:
    """Assert the CLI failed the documented way (exit 2, no traceback, exactly one ``error:`` line); return it."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr, f"traceback printed:\n{stderr[-3000:]}"
    assert returncode == 2, f"exit status {returncode}, expected 2:\n{stderr[-3000:]}"
    assert len(lines) == 1, f"expected one 'error:' line, got {len(lines)}:\n{stderr[-3000:]}"
    return lines[0]


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def temp_files(folder: Path) -> list[Path]:
    """Temp files of atomic saves (``.checkpoint.pt.XXXX.tmp`` and the like) left in ``folder``."""
    return sorted(folder.glob(".*.tmp"))


def short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."
