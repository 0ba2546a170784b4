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

from typing import Any

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
from .run_log import RunLog
from .schedules import due


class Monitors:
    """Runs the monitors after an epoch and writes what they find to the run's log and the console.

    Why an object: the label-free monitor's fixed batch is built once, at its first use, and reused every
    epoch; building it lists (and, for an archive, checks) the whole train split only to keep a seeded few
    hundred images, the same ones each time (so the curve moves only because the network does).
    """

    def __init__(self, cfg: DictConfig, info: DistInfo, epochs: int, run_log: RunLog) -> None:
        self.cfg, self.info, self.epochs, self.run_log = cfg, info, epochs, run_log
        self._rank_batch: Dataset | None = None

    def after_epoch(self, teacher_backbone: nn.Module, epoch: int, it: int) -> None:
        self.knn(teacher_backbone, epoch, it)
        self.label_free(teacher_backbone, epoch, it)

    def _forked_rng(self) -> Any:
        devices = [self.info.device] if self.info.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)  # the data loaders draw seeds; keep the run's RNG stream

    def _eval_split(self, split: str, limit: int) -> Dataset:
        """``limit`` seeded images of ``split`` with the evaluation transform, unreadable ones skipped."""
        a, d = self.cfg.aug, self.cfg.data
        transform = eval_transform(a.global_size, mean=list(a.mean), std=list(a.std))
        return build_dataset(d.path, split, limit=limit, transform=transform, cache_dir=d.cache_dir,
                             on_bad_image="skip", seed=self.cfg.seed)

    def _features(self, backbone: nn.Module, images: Dataset, desc: str,
                  use_amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = backbone.training
        try:
            return extract_features(backbone, images, batch_size=256, device=self.info.device,
                                    num_workers=self.cfg.data.num_workers, use_amp=use_amp, desc=desc)
        finally:
            backbone.train(was_training)

    def knn(self, backbone: nn.Module, epoch: int, it: int) -> None:
        """Online kNN of the teacher's features every ``monitor.knn_every`` epochs (learning / collapse):
        top-1 and top-5 in percent of the weighted kNN with ``k = monitor.knn_k``, by rank 0 as the rest wait."""
        m, d = self.cfg.monitor, self.cfg.data
        if not due(m.knn_every, epoch, self.epochs):
            return
        with self._forked_rng():
            if self.info.is_main:
                bank = self._eval_split(d.train_split, m.knn_train_images)
                queries = self._eval_split(d.val_split, m.knn_val_images)
                check_class_sets(bank.classes, queries.classes)
                train_f, train_y = self._features(backbone, bank, "knn bank", use_amp=True)
                val_f, val_y = self._features(backbone, queries, "knn queries", use_amp=True)
                (result,) = knn_classify(train_f, train_y, val_f, val_y, ks=[m.knn_k], temperature=m.knn_temperature,
                                         num_classes=len(bank.classes), backend="torch", device=self.info.device)
            barrier()
        if self.info.is_main:
            top1, k = result.top1, m.knn_k
            self.run_log.write({"type": "knn", "epoch": epoch, "iteration": it, "k": k, "top1": top1,
                                "top5": result.top5})
            self.run_log.scalars({f"knn/top1_k{k}": top1}, it)
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
        if due(m.rank_every, epoch, self.epochs):
            with self._forked_rng():  # keep the run's RNG stream (exact resume)
                if self._rank_batch is None:
                    self._rank_batch = self._eval_split(self.cfg.data.train_split, m.rank_images)
                # float32 (no autocast): bf16 rounding would bury the small singular values that RankMe counts
                feats, _ = self._features(backbone, self._rank_batch, "rank batch", use_amp=False)
                if feats.shape[0] >= 2:  # non-finite features (a diverged teacher): NaN, the trainer refuses to save
                    finite = bool(torch.isfinite(feats).all())
                    record.update(rankme=effective_rank(feats) if finite else float("nan"),
                                  embed_std=embedding_std(feats) if finite else float("nan"),
                                  embed_dim=int(feats.shape[1]), rank_images=int(feats.shape[0]))
        if not record["alpha"] and len(record) == 1:
            return
        self.run_log.write({"type": "monitor", "epoch": epoch, "iteration": it, **record})
        scalars = {f"alpha/{name}": v for name, v in record["alpha"].items()}
        scalars.update({f"monitor/{k}": float(record[k]) for k in ("rankme", "embed_std") if k in record})
        self.run_log.scalars(scalars, it)
        if "rankme" in record:
            print(f"epoch {epoch + 1}: RankMe {record['rankme']:.1f} of "
                  f"{min(record['embed_dim'], record['rank_images'])}, normalised embedding std "
                  f"{record['embed_std']:.3f}", flush=True)
            if record["embed_std"] < m.collapse_std:
                print(f"warning: representation collapsing: normalised embedding std {record['embed_std']:.3f} < "
                      f"monitor.collapse_std {m.collapse_std} at epoch {epoch + 1} (RankMe "
                      f"{record['rankme']:.1f}); check teacher_temp, the centre momentum and the learning rate",
                      flush=True)
