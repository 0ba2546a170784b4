"""Frozen-backbone features for the evaluators, and a disk cache for them.

Why a cache: the backbone forward pass dominates every frozen evaluation. kNN at several ``k`` or
temperatures and a linear probe trained on fixed features all read the same tensors, so they are stored
once per (weights, checkpoint key, architecture, feature kind, transform, identity of every image file:
see ``feature_key.py``) and reused. A cache file whose name or contents do not match is simply
recomputed, never trusted.

Which features (``n_last_blocks``):

* ``0`` — the pooled output ``model(x)`` of a ``num_classes=0`` backbone: the final-norm CLS token for
  DeiT (what DINO's kNN uses) and the global average of the final stage for Container.
* ``n > 0`` — richer features for the linear probe. DeiT: the CLS tokens of the last ``n`` blocks, each
  passed through the final norm, concatenated (DINO's ``n_last_blocks=4`` for ViT-S), plus with
  ``avgpool`` the mean patch token of the last block (DINO's choice for ViT-B). Container: the last ``n``
  stage maps, each global-average pooled, concatenated (``n=2`` = stage 3 + stage 4), the final norm
  applied to the last stage as in the pooled feature; hierarchical stages play the role of blocks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_atomic
from ..data import skip_bad_collate
from ..errors import UserError
from .feature_key import dataset_fingerprint

log = logging.getLogger(__name__)

__all__ = [
    "autocast",
    "cached_features",
    "default_n_last_blocks",
    "extract_features",
    "feature_fn",
    "feature_kind",
    "is_token_model",
    "make_loader",
]


def is_token_model(model: nn.Module) -> bool:
    """True for ViT-style models (a CLS token); False for hierarchical ones (Container, CNNs)."""
    return isinstance(getattr(model, "cls_token", None), torch.Tensor)


def default_n_last_blocks(model: nn.Module) -> int:
    """DINO's 4 last blocks for ViTs; the last 2 stages (3 and 4) for hierarchical backbones."""
    return 4 if is_token_model(model) else 2


def feature_kind(n_last_blocks: int = 0, avgpool: bool = False) -> str:
    """A short name of the feature (part of cache file names and reports)."""
    if n_last_blocks <= 0:
        return "pooled"
    return f"last{n_last_blocks}" + ("avg" if avgpool else "")


def feature_fn(model: nn.Module, n_last_blocks: int = 0,
               avgpool: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images -> features ``[B, D]`` implementing the choice described in the module docstring."""
    if n_last_blocks <= 0:
        return model
    if not hasattr(model, "forward_intermediates"):
        raise UserError(f"{type(model).__name__} has no forward_intermediates; use pooled features (n_last_blocks=0)")
    if is_token_model(model):
        def tokens(x: torch.Tensor) -> torch.Tensor:
            outs = model.forward_intermediates(x, indices=n_last_blocks, return_prefix_tokens=True, norm=True,
                                               output_fmt="NLC", intermediates_only=True)
            parts = [prefix[:, 0] for _, prefix in outs]
            if avgpool:
                parts.append(outs[-1][0].mean(dim=1))
            return torch.cat(parts, dim=-1)
        return tokens

    if avgpool:
        raise UserError("--avgpool applies to ViT (DeiT) backbones only; hierarchical stages are already pooled")

    def stages(x: torch.Tensor) -> torch.Tensor:
        outs = model.forward_intermediates(x, indices=n_last_blocks, norm=True, intermediates_only=True)
        return torch.cat([o.float().mean(dim=(2, 3)) for o in outs], dim=-1)
    return stages


def autocast(device: torch.device, use_amp: bool):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op context on the CPU."""
    enabled = bool(use_amp) and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
                drop_last: bool = False, device: torch.device | None = None, seed: int = 0) -> DataLoader:
    """A DataLoader that drops unreadable images (see ``container_ssl.data``) instead of crashing."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=skip_bad_collate, drop_last=drop_last, generator=generator,
                      pin_memory=device is not None and device.type == "cuda")


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, batch_size: int = 256,
                     device: torch.device | str = "cpu", num_workers: int = 4, use_amp: bool = True,
                     n_last_blocks: int = 0, avgpool: bool = False,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``float32 [N, D]`` and labels ``int64 [N]`` of ``dataset`` (in dataset order, bad images dropped)."""
    device = torch.device(device)
    model.eval().to(device)
    fn = feature_fn(model, n_last_blocks, avgpool)
    feats, labels = [], []
    loader = make_loader(dataset, batch_size, num_workers, device=device)
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        if batch is None:
            continue
        images, targets = batch
        with autocast(device, use_amp):
            out = fn(images.to(device, non_blocking=True))
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    if not feats:
        raise UserError(f"no readable images in the dataset ({len(dataset)} listed)")
    return torch.cat(feats), torch.cat(labels)


def cached_features(model: nn.Module, info: dict, dataset: Dataset, cache_dir: str | os.PathLike | None,
                    batch_size: int = 256, device: torch.device | str = "cpu", num_workers: int = 4,
                    use_amp: bool = True, n_last_blocks: int = 0, avgpool: bool = False,
                    desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features`, stored as ``<cache_dir>/<sha256[:12]>_<key>_<fingerprint[:16]>_<kind>.pt``.

    ``info`` is :func:`load_backbone`'s second return value. An empty ``cache_dir`` disables the cache.
    The fingerprint (:mod:`.feature_key`) covers the files' identity, the transform, the architecture
    spec (a plain state_dict could be evaluated as two ``--model``/``--img-size`` settings with the same
    file hash), the feature kind and the precision; the whole of it is stored in the file and checked on
    reading, so a cache file is used only for exactly the inputs it was computed from.
    """
    kwargs = {"batch_size": batch_size, "device": device, "num_workers": num_workers, "use_amp": use_amp,
              "n_last_blocks": n_last_blocks, "avgpool": avgpool, "desc": desc}
    if not cache_dir:
        return extract_features(model, dataset, **kwargs)
    folder = Path(cache_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--feature-cache {folder} is a file, not a folder; give a folder for the cached "
                        "features (it is created if missing) or use --no-feature-cache")
    kind = feature_kind(n_last_blocks, avgpool)
    spec = {k: info.get(k) for k in ("model", "img_size", "patch_size", "format")}
    key = info.get("checkpoint_key") or info.get("format") or "weights"
    bf16 = bool(use_amp) and torch.device(device).type == "cuda"
    fingerprint = dataset_fingerprint(dataset, {**spec, "sha256": info["sha256"], "key": key, "kind": kind,
                                                "bf16": bf16})
    path = folder / f"{info['sha256'][:12]}_{key}_{fingerprint[:16]}_{kind}.pt"
    meta = {"checkpoint": info.get("checkpoint"), "sha256": info["sha256"], "key": key, "kind": kind,
            "fingerprint": fingerprint, "n_listed": len(dataset), "data_root": str(getattr(dataset, "root", "")),
            **spec}
    if path.is_file():
        cached = _read_cache(path, meta)
        if cached is not None:
            log.info("features from cache %s", path)
            return cached
        log.warning("feature cache %s is stale or unreadable; recomputing", path)
    feats, labels = extract_features(model, dataset, **kwargs)
    save_atomic({"features": feats, "labels": labels, "meta": meta}, path)
    return feats, labels


def _read_cache(path: Path, meta: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (features, labels), or None when the file is damaged or was computed from other inputs."""
    try:
        blob = load_checkpoint(path)
        feats, labels = blob["features"], blob["labels"]
        stored = blob.get("meta", {})
        if any(stored.get(k) != meta[k] for k in ("sha256", "fingerprint")) or feats.shape[0] != labels.shape[0]:
            return None
        return feats.float(), labels.long()
    except Exception as e:  # noqa: BLE001  (a cache that cannot be read for any reason is recomputed)
        log.debug("unreadable feature cache %s: %r", path, e)
        return None
