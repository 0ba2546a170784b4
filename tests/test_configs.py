"""Every shipped pretraining config loads, validates and builds what it names.

Why: the configs are what users run first; a renamed key, a wrong type or a model name that is not
registered would otherwise only surface minutes into a run (or on a cluster). The 32-px configs are also
pushed through one augmentation + student forward on a tiny batch, with the back-end they configure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from container_ssl.config import load_config
from container_ssl.ssl.augment import read_aug_settings
from container_ssl.ssl.dino import build_models
from container_ssl.ssl.loader import build_augmentation, collate_views
from container_ssl.ssl.schedules import cosine_schedule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "pretrain").glob("*.yaml"))


def test_configs_are_found():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path: Path):
    cfg = load_config(path)
    settings = read_aug_settings(cfg.aug)
    o = cfg.optim
    assert o.batch_size_per_gpu > 0
    cosine_schedule(o.base_lr, o.min_lr, o.epochs, 10, warmup_epochs=o.warmup_epochs)  # raises on a bad warm-up
    student, teacher = build_models(cfg)
    assert student.backbone.pretrained_cfg["architecture"].startswith(cfg.model.name)  # the model it names
    assert not any(p.requires_grad for p in teacher.parameters())
    if cfg.model.img_size > 32:
        return  # the 224-px configs: building is the check (a forward would take seconds on a CPU)
    # the trainer's own path: per-image transform, the loader's collate, then the batched back-end if any
    transform, batched = build_augmentation(cfg.aug, torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    views, _, skipped = collate_views([(transform(x), 0) for x in images])
    assert skipped == []
    if batched is not None:
        views = batched(views)
    assert [v.shape[-1] for v in views] == [settings.global_size] * 2 + [settings.local_size] * settings.n_local
    with torch.no_grad():
        out = student(views)
    assert out.shape == (2 * len(views), cfg.model.out_dim) and torch.isfinite(out).all()
