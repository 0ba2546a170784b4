"""Fixtures for the evaluator tests: a run folder with a tiny pretraining checkpoint on real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import write_pretrain_checkpoint, write_run_files


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory, cifar10_small) -> Path:
    """A run folder (checkpoint.pt, summary.json, metrics.jsonl) whose config points at the small CIFAR-10."""
    run_dir = tmp_path_factory.mktemp("run")
    write_pretrain_checkpoint(run_dir / "checkpoint.pt", str(cifar10_small))
    write_run_files(run_dir)
    return run_dir
