"""Online kNN monitor: the cheap way to see learning (or collapse) during a run.

Why the teacher: DINO's teacher is the better model throughout training and the one evaluated at the
end. Every ``monitor.knn_every`` epochs its pooled features on the labelled train split (the bank) and
the val split (the queries) are extracted with the evaluation transform and classified by DINO's
weighted kNN. Caps (``monitor.knn_train_images`` / ``knn_val_images``) keep this a few seconds on a CPU.
Under DDP, rank 0 does it alone while the others wait; it is a diagnostic, not the final evaluation.
"""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig
from torch import nn

from ..data import build_dataset
from ..distributed import DistInfo, barrier
from ..eval.features import extract_features
from ..eval.knn import check_class_sets, knn_classify
from ..eval.transforms import eval_transform
from .rankme import effective_rank, embedding_std


def online_knn(backbone: nn.Module, cfg: DictConfig, info: DistInfo) -> tuple[float, Optional[float]]:
    """(top-1, top-5) in percent of the weighted kNN with ``k = monitor.knn_k`` (rank 0; NaN elsewhere)."""
    top1, top5 = float("nan"), None
    if info.is_main:
        m, a, d = cfg.monitor, cfg.aug, cfg.data
        transform = eval_transform(a.global_size, mean=list(a.mean), std=list(a.std))
        common = dict(transform=transform, cache_dir=d.cache_dir, on_bad_image="skip", seed=cfg.seed)
        bank = build_dataset(d.path, d.train_split, limit=m.knn_train_images, **common)
        queries = build_dataset(d.path, d.val_split, limit=m.knn_val_images, **common)
        check_class_sets(bank.classes, queries.classes)
        was_training = backbone.training
        kwargs = dict(batch_size=256, device=info.device, num_workers=d.num_workers, use_amp=True)
        try:
            train_f, train_y = extract_features(backbone, bank, desc="knn bank", **kwargs)
            val_f, val_y = extract_features(backbone, queries, desc="knn queries", **kwargs)
        finally:
            backbone.train(was_training)
        (result,) = knn_classify(train_f, train_y, val_f, val_y, ks=[m.knn_k], temperature=m.knn_temperature,
                                 num_classes=len(bank.classes), backend="torch", device=info.device)
        top1, top5 = result.top1, result.top5
    barrier()
    return top1, top5


def label_free(backbone: nn.Module, cfg: DictConfig, info: DistInfo) -> dict[str, float]:
    """RankMe and the normalised per-dimension std of the teacher's features on one fixed batch (rank 0).

    Why a fixed batch: the same ``monitor.rank_images`` train images (seeded subset, evaluation transform)
    every epoch, so the curve moves only because the network does. Features are computed in float32
    (no autocast): bf16 rounding would bury the small singular values that RankMe counts.
    """
    m, a, d = cfg.monitor, cfg.aug, cfg.data
    transform = eval_transform(a.global_size, mean=list(a.mean), std=list(a.std))
    images = build_dataset(d.path, d.train_split, limit=m.rank_images, transform=transform, cache_dir=d.cache_dir,
                           on_bad_image="skip", seed=cfg.seed)
    was_training = backbone.training
    try:
        feats, _ = extract_features(backbone, images, batch_size=256, device=info.device,
                                    num_workers=d.num_workers, use_amp=False, desc="rank batch")
    finally:
        backbone.train(was_training)
    if feats.shape[0] < 2:
        return {}
    sizes = {"embed_dim": int(feats.shape[1]), "rank_images": int(feats.shape[0])}
    if not bool(torch.isfinite(feats).all()):  # a diverged teacher: report it, the trainer refuses to save it
        return {"rankme": float("nan"), "embed_std": float("nan"), **sizes}
    return {"rankme": effective_rank(feats), "embed_std": embedding_std(feats), **sizes}
