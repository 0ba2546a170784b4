"""Run the ``container-ssl`` CLI with one injected fault; the drills start it as a subprocess.

Why a wrapper instead of a hook in the package: the drills must exercise the real command line (argument
parsing, error printing, exit status) while a fault that no configuration can produce on demand, a NaN
in one batch, happens at a chosen step. ``CONTAINER_SSL_FAULT_NAN_AT=N`` fills the first image of every
crop of training step N (1-based) with NaN, as a corrupt decoded image would, and first prints the sha256
of the run's ``checkpoint.pt`` at that moment so the drill can prove the failure did not touch it. A
comma-separated list (``1,2,3``) poisons each of those steps.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "none"


def install_nan_fault(steps: set[int]) -> None:
    from container_ssl.ssl import trainer

    original = trainer.DinoTrainer.train_step

    def train_step(self: Any, views: Any, epoch: int, it: int) -> int:
        if it + 1 in steps:
            print(f"fault: NaN injected at step {it + 1}; checkpoint sha256 {sha256(self.out / 'checkpoint.pt')}",
                  flush=True)
            views = [v.clone() for v in views]
            for v in views:
                v[0] = float("nan")
        return original(self, views, epoch, it)

    trainer.DinoTrainer.train_step = train_step


def main(argv: list[str]) -> int:
    steps = {int(s) for s in os.environ.get("CONTAINER_SSL_FAULT_NAN_AT", "").split(",") if s.strip()}
    if steps:
        install_nan_fault(steps)
    from container_ssl.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
