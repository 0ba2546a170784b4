"""Fixtures for the evaluator tests: a run folder with a real tiny pretraining checkpoint on real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import MODEL, write_run_files


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory, write_trainer_checkpoint) -> Path:
    """A run folder (checkpoint.pt written by the trainer at epoch 2, summary.json, metrics.jsonl) whose
    config points at the small CIFAR-10."""
    run_dir = tmp_path_factory.mktemp("run")
    write_trainer_checkpoint(run_dir, *MODEL, epoch=2)
    write_run_files(run_dir)
    return run_dir
