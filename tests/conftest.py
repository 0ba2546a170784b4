"""Shared fixtures: a small real CIFAR-10 ImageFolder cut from the shared archive (never committed)."""

from __future__ import annotations

import os
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cifar10_archive() -> Path | None:
    """The shared CIFAR-10 JPEG archive: ``$CONTAINER_SSL_CIFAR10`` or ``../shared/data`` beside the repo."""
    env = os.environ.get("CONTAINER_SSL_CIFAR10")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    return path if path.is_file() else None


def require_cifar10() -> Path:
    path = cifar10_archive()
    if path is None:
        msg = "CIFAR-10 archive not found: set CONTAINER_SSL_CIFAR10 or place ../shared/data/cifar10-jpeg.tar.gz"
        if os.environ.get("CONTAINER_SSL_REQUIRE_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def extract_subset(archive: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Extract the first ``per_class[split]`` images of every class of each split into ``dest``."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in per_class:
                continue
            key = (parts[1], parts[2])
            if counts[key] >= per_class[parts[1]]:
                continue
            counts[key] += 1
            target = dest / parts[1] / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="session")
def cifar10_archive_path() -> Path:
    return require_cifar10()


@pytest.fixture(scope="session")
def cifar10_small(tmp_path_factory) -> Path:
    """ImageFolder root with train/ (30 per class) and val/ (10 per class) real CIFAR-10 JPEGs."""
    archive = require_cifar10()
    return extract_subset(archive, tmp_path_factory.mktemp("cifar10_small"), {"train": 30, "val": 10})


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Archives extracted by the code under test go to a per-session temp cache, not ~/.cache."""
    monkeypatch.setenv("CONTAINER_SSL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run with one intra-op thread.

    Why: they are many tiny forwards; on a small shared CPU, intra-op threads mostly wait for each other
    (measured about 6x slower wall time than one thread under load). The count is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def write_trainer_checkpoint(cifar10_small):
    """Factory: a real pretraining checkpoint of the tiny CPU run over ``cifar10_small``, written by the
    trainer itself (its models, its state, its writer) at ``epoch``; ``overrides`` change the config.

    Why not a hand-written dict: a checkpoint built by the tests would pass them even after the trainer's
    schema changed under the readers (evaluators, export, visualize).
    """
    from container_ssl.config import load_config
    from container_ssl.ssl.trainer import DinoTrainer
    from tests.train.test_pretrain import TINY

    def write(out: Path, *overrides: str, epoch: int = 0) -> Path:
        cfg = load_config(overrides=[*TINY, f"data.path={cifar10_small}", f"output_dir={out}", "data.subset=32",
                                     *overrides])
        DinoTrainer(cfg).save(epoch, 0)
        return out / "checkpoint.pt"

    return write
