"""The training data of a pretraining run: the loader of multi-crop views, its augmentation back-end, and
the training set's fingerprint that a resume checks.

Why a fingerprint: the shuffle (and so the run) depends on the list of training files. A checkpoint
records the image count and a digest of that list, and a resume on another list is refused unless asked
for, since it would not continue the run it claims to continue.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..config import AugBackend
from ..data import Skipped, build_dataset
from ..errors import UserError
from .augment import MultiCropTransform
from .sampling import ResumableSampler, SeededViews

log = logging.getLogger(__name__)

MAX_NAMED_UNREADABLE = 1000  # summary.json names at most this many unreadable files (all are counted)


def collate_views(batch: list) -> tuple[Any, Any, list[Skipped]]:
    """(views, labels, the skipped unreadable images); views is a list of crop batches.

    A dataset built without ``name_skips`` marks a skipped image as ``None``: it is counted without a name.
    """
    skipped = [b if b is not None else Skipped("", "unreadable") for b in batch
               if b is None or isinstance(b, Skipped)]
    kept = [b for b in batch if b is not None and not isinstance(b, Skipped)]
    if not kept:
        return None, None, skipped
    views, labels = default_collate(kept)
    return views, labels, skipped


def build_augmentation(aug_cfg: Any, device: torch.device) -> tuple[Callable, nn.Module | None]:
    """(per-image transform run in the loader, batched augmentation run on ``device`` or None).

    The CPU back-end makes every crop per image in the loader workers; the GPU back-end only draws the crop
    boxes and resizes there, and makes all crops of a batch at once on the training device (which may be
    the CPU).
    """
    if AugBackend(aug_cfg.backend) is AugBackend.cpu:
        return MultiCropTransform(aug_cfg), None
    # AugBackend.gpu; kornia is imported only when the batched back-end is used
    from .augment_gpu import BoxAndResize, KorniaMultiCrop
    return BoxAndResize(aug_cfg), KorniaMultiCrop(aug_cfg).to(device)


def build_loader(cfg: DictConfig, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> tuple[DataLoader, ResumableSampler, nn.Module | None]:
    """Train loader yielding multi-crop views (CPU back-end) or base-size uint8 images (GPU back-end)."""
    transform, gpu_aug = build_augmentation(cfg.aug, device)
    data = build_dataset(cfg.data.path, cfg.data.train_split, cache_dir=cfg.data.cache_dir,
                         on_bad_image=cfg.data.on_bad_image, limit=cfg.data.subset, seed=cfg.seed, name_skips=True)
    views = SeededViews(data, seed=cfg.seed, transform=transform)
    sampler = ResumableSampler(len(views), cfg.optim.batch_size_per_gpu, seed=cfg.seed, rank=rank,
                               world_size=world_size)
    workers = cfg.data.num_workers
    loader = DataLoader(views, batch_size=cfg.optim.batch_size_per_gpu, sampler=sampler, num_workers=workers,
                        collate_fn=collate_views, pin_memory=device.type == "cuda", drop_last=False,
                        persistent_workers=workers > 0, generator=torch.Generator(),
                        prefetch_factor=4 if workers > 0 else None)
    return loader, sampler, gpu_aug


def name_unreadable(named: list[dict[str, str]], skipped: list[Skipped], root: Path) -> None:
    """Append the skipped files to ``named`` as ``{"path" (relative to the split), "reason"}`` for summary.json,
    up to MAX_NAMED_UNREADABLE in all (the count of skipped images covers every one)."""
    for s in skipped[:max(MAX_NAMED_UNREADABLE - len(named), 0)]:
        path = Path(s.path)
        name = str(path.relative_to(root)) if s.path and path.is_relative_to(root) else s.path
        named.append({"path": name, "reason": s.reason})


def cpu_thread_tip(device: torch.device, aug_backend: str, num_workers: int,
                   env: Mapping[str, str]) -> str | None:
    """A one-line tip when CPU training shares its cores with per-image augmentation in loader workers.

    Why: OpenMP's default (active) wait keeps the training threads spinning between parallel regions, so a
    loader worker on the same cores is starved and the whole step waits for it. On 2 cores the quick CIFAR-10
    recipe ran at ~124 images/s that way, ~147 with ``OMP_WAIT_POLICY=PASSIVE`` (which must be set before
    Python starts, so the trainer can only say so), and ~180 with the batched kornia back-end
    (``aug.backend=gpu``, which runs on the training device), where the workers only decode.
    """
    if device.type != "cpu" or aug_backend != "cpu" or num_workers <= 0 or "OMP_WAIT_POLICY" in env:
        return None
    return ("tip: on a CPU, aug.backend=gpu (batched augmentation in the training process) or "
            "OMP_WAIT_POLICY=PASSIVE in the environment keeps the loader workers from starving the training threads")


def check_not_inside_data(out: Path, data_path: str) -> None:
    """Refuse an output folder inside the data folder: checkpoints and logs would join the training set."""
    data = Path(data_path)
    if not data.is_dir():
        return  # 'cifar10' or an archive: extracted elsewhere
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise UserError(f"output_dir {out} is inside the data folder {data_path}; the run would write into its "
                        "training set: choose an output_dir outside it")


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """Image count and sha256 of the (relative path, class) list: what the shuffle and the run depend on.

    Why relative paths: ``data.path`` may change between starts (the same data moved or re-extracted);
    the list of files under it, in order, may not.
    """
    root = str(getattr(dataset, "root", ""))
    digest = hashlib.sha256()
    for sample in getattr(dataset, "samples", []):
        name, target = str(sample[0]), int(sample[1])
        rel = os.path.relpath(name, root) if root and os.path.isabs(name) else name
        digest.update(f"{rel}\t{target}\n".encode())
    return {"images": len(dataset), "digest": digest.hexdigest()}


def check_same_data(saved: dict | None, now: dict, path: Path, data_path: str, allow_change: bool,
                    warn: bool) -> None:
    """Refuse to resume on another training set: its shuffle differs, so the run would not continue exactly.

    ``saved`` is the checkpoint's fingerprint, ``now`` this run's; ``allow_change`` (--allow-data-change)
    turns the refusal into a warning; ``warn`` is False on the ranks that should stay quiet.
    """
    if not saved:
        if warn:
            log.warning("%s records no training-set fingerprint (written by an older version): cannot check "
                        "that the data are the same as when it was written", path)
        return
    if saved.get("images") == now["images"] and saved.get("digest") == now["digest"]:
        return
    what = (f"{saved.get('images')} images then, {now['images']} now" if saved.get("images") != now["images"]
            else f"{now['images']} images both times, but a different file list")
    if allow_change:
        if warn:
            log.warning("resuming on a different training set (%s), as --allow-data-change asks: the run no "
                        "longer continues exactly", what)
        return
    raise UserError(f"{path} was written while training on a different training set ({what}; "
                    f"data.path={data_path}); resuming would not continue that run: point data.path at "
                    "the original data, pass --allow-data-change to switch deliberately, or use a new output_dir")
