"""The tiny CPU pretraining every training test starts from: Container-Light-nano on 32-px images.

Why a plain module (and not only fixtures in ``tests/conftest.py``): the overrides are needed where no fixture
reaches, in module-level constants and in the argument lists of CLI subprocesses; and a test module must not
import another test module (tests/test_test_imports.py), so they cannot live in a ``test_*.py`` file.
``tests/conftest.py`` builds its shared runs from these too.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from container_ssl.config import load_config

TINY = [
    "device=cpu", "model.name=container_light_nano", "model.img_size=32", "model.patch_size=2",
    "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32", "model.drop_path_rate=0.1",
    "aug.global_size=32", "aug.local_size=16", "aug.n_local=2", "data.num_workers=0",
    "optim.batch_size_per_gpu=16", "optim.warmup_epochs=1", "optim.base_lr=0.004",
    "loss.warmup_teacher_temp_epochs=1", "monitor.log_every=1", "monitor.log_images=false",
    "checkpoint_every_epochs=1",
]

# 64 images in batches of 16: 4 iterations per epoch, 8 in all; the uninterrupted run that the resume tests
# compare with (tests/conftest.py's ``reference_run``)
REFERENCE = ["data.subset=64", "optim.epochs=2"]


def tiny_cfg(data: Path, out: Path, *extra: str) -> DictConfig:
    """The tiny run's config over the ImageFolder ``data``, writing to ``out``, with ``extra`` overrides."""
    return load_config(overrides=TINY + [f"data.path={data}", f"output_dir={out}", *extra])
