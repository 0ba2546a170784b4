"""Monitors of a pretraining run: online kNN and label-free signals, the cheap way to see learning (or
collapse) as it happens.

Why the teacher: DINO's teacher is the better model throughout training and the one evaluated at the
end. Every ``monitor.knn_every`` epochs its pooled features on the labelled train split (the bank) and
the val split (the queries) are extracted with the evaluation transform and classified by DINO's
weighted kNN. Caps (``monitor.knn_train_images`` / ``knn_val_images``) keep this a few seconds on a CPU.
Under DDP, rank 0 does it alone while the others wait; it is a diagnostic, not the final evaluation.
Every epoch rank 0 also logs alpha per mixed block and, every ``monitor.rank_every`` epochs, RankMe and
the embedding std of one fixed batch (:mod:`container_ssl.ssl.rankme`). Both monitors run under a forked
RNG, so they leave the run's random stream (and an exact resume) alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ..data import build_dataset
from ..distributed import DistInfo, barrier
from ..eval.features import extract_features
from ..eval.knn import check_class_sets, knn_classify
from ..eval.transforms import eval_transform
from ..models.affinity_probe import mix_weights
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


def rank_batch(cfg: DictConfig) -> Dataset:
    """The fixed batch of the label-free monitor: ``monitor.rank_images`` seeded train images, evaluation
    transform (the same images on every call, so the curve moves only because the network does)."""
    m, a, d = cfg.monitor, cfg.aug, cfg.data
    transform = eval_transform(a.global_size, mean=list(a.mean), std=list(a.std))
    return build_dataset(d.path, d.train_split, limit=m.rank_images, transform=transform, cache_dir=d.cache_dir,
                         on_bad_image="skip", seed=cfg.seed)


def label_free(backbone: nn.Module, images: Dataset, device: torch.device, num_workers: int = 0) -> dict[str, float]:
    """RankMe and the normalised per-dimension std of ``backbone``'s features on ``images`` (:func:`rank_batch`).

    Features are computed in float32 (no autocast): bf16 rounding would bury the small singular values that
    RankMe counts.
    """
    was_training = backbone.training
    try:
        feats, _ = extract_features(backbone, images, batch_size=256, device=device, num_workers=num_workers,
                                    use_amp=False, desc="rank batch")
    finally:
        backbone.train(was_training)
    if feats.shape[0] < 2:
        return {}
    sizes = {"embed_dim": int(feats.shape[1]), "rank_images": int(feats.shape[0])}
    if not bool(torch.isfinite(feats).all()):  # a diverged teacher: report it, the trainer refuses to save it
        return {"rankme": float("nan"), "embed_std": float("nan"), **sizes}
    return {"rankme": effective_rank(feats), "embed_std": embedding_std(feats), **sizes}


class Monitors:
    """Runs the monitors after an epoch and writes what they find: ``log`` (metrics lines), ``tb``
    (TensorBoard, None off rank 0) and the console.

    Why an object: the label-free monitor's fixed batch is built once, at its first use, and reused every
    epoch; building it lists (and, for an archive, checks) the whole train split only to keep a seeded few
    hundred images, the same ones each time.
    """

    def __init__(self, cfg: DictConfig, info: DistInfo, epochs: int, log: Callable[[dict[str, Any]], None],
                 tb: Any) -> None:
        self.cfg, self.info, self.epochs, self.log, self.tb = cfg, info, epochs, log, tb
        self._rank_batch: Dataset | None = None

    def after_epoch(self, teacher_backbone: nn.Module, epoch: int, it: int) -> None:
        self.knn(teacher_backbone, epoch, it)
        self.label_free(teacher_backbone, epoch, it)

    def _forked_rng(self) -> Any:
        devices = [self.info.device] if self.info.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)  # the data loaders draw seeds; keep the run's RNG stream

    def knn(self, backbone: nn.Module, epoch: int, it: int) -> None:
        """Online kNN of the teacher's features every ``monitor.knn_every`` epochs (learning / collapse)."""
        every = self.cfg.monitor.knn_every
        if not every or ((epoch + 1) % every and epoch + 1 != self.epochs):
            return
        with self._forked_rng():
            top1, top5 = online_knn(backbone, self.cfg, self.info)
        if self.info.is_main:
            k = self.cfg.monitor.knn_k
            self.log({"type": "knn", "epoch": epoch, "iteration": it, "k": k, "top1": top1, "top5": top5})
            self.tb.scalars({f"knn/top1_k{k}": top1}, it)
            print(f"epoch {epoch + 1}: online kNN (k={k}) top-1 {top1:.2f}%", flush=True)

    def label_free(self, backbone: nn.Module, epoch: int, it: int) -> None:
        """alpha per mixed block every epoch; RankMe and embedding std every ``monitor.rank_every`` epochs.

        Why: both tell, without labels, whether the teacher's representation spreads out or collapses;
        alpha shows how much each mixed block leans on attention.
        """
        if not self.info.is_main:
            return
        m = self.cfg.monitor
        record: dict[str, Any] = {"alpha": mix_weights(backbone)}
        if m.rank_every and ((epoch + 1) % m.rank_every == 0 or epoch + 1 == self.epochs):
            with self._forked_rng():  # keep the run's RNG stream (exact resume)
                if self._rank_batch is None:
                    self._rank_batch = rank_batch(self.cfg)
                record.update(label_free(backbone, self._rank_batch, self.info.device, self.cfg.data.num_workers))
        if not record["alpha"] and len(record) == 1:
            return
        self.log({"type": "monitor", "epoch": epoch, "iteration": it, **record})
        scalars = {f"alpha/{name}": v for name, v in record["alpha"].items()}
        scalars.update({f"monitor/{k}": float(record[k]) for k in ("rankme", "embed_std") if k in record})
        self.tb.scalars(scalars, it)
        if "rankme" in record:
            print(f"epoch {epoch + 1}: RankMe {record['rankme']:.1f} of {min(record['embed_dim'], record['rank_images'])}"
                  f", normalised embedding std {record['embed_std']:.3f}", flush=True)
            if record["embed_std"] < m.collapse_std:
                print(f"warning: representation collapsing: normalised embedding std {record['embed_std']:.3f} < "
                      f"monitor.collapse_std {m.collapse_std} at epoch {epoch + 1} (RankMe "
                      f"{record['rankme']:.1f}); check teacher_temp, the centre momentum and the learning rate",
                      flush=True)
