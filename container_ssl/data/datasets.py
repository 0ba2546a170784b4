"""Datasets for pretraining and evaluation: ImageFolder trees, archives of them, and torchvision CIFAR-10.

Why one entry point: every command takes the same ``data.path`` (a folder with ``train/`` and ``val/``,
a .tar/.tar.gz of one, or ``cifar10``) so a user points pretraining, kNN, linear and finetune at the same
data the same way. Bad images are skipped and counted (``on_bad_image=skip``, the default) or stop the
run with the file's name (``error``); they never crash a run mid-epoch without saying which file. Files
the listing leaves out (not images, hidden, symlink loops: see ``listing.py``) are in ``dataset.left_out``,
which :func:`left_out_record` turns into the JSON that run summaries carry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder

from ..errors import UserError
from .archives import default_cache_dir, extract_archive, is_archive
from .images import BadImage, load_rgb
from .listing import LeftOut, list_images

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
MAX_NAMED = 1000  # files named in a left-out record; the counts cover all of them


class Skipped(NamedTuple):
    """An image skipped while loading, in place of the sample: the file and why (see ``name_skips``)."""

    path: str
    reason: str


class SafeImageFolder(ImageFolder):
    """ImageFolder whose unreadable files become ``None`` (skip) or a :class:`UserError` naming the file.

    With ``name_skips`` a skipped file becomes a :class:`Skipped` record instead of ``None``, so a consumer
    that runs the loading in worker processes (the pretraining loop) can still say which files it left out.

    The files are listed by :func:`~container_ssl.data.listing.list_images` (every real folder once, every
    extension Pillow opens); what it leaves out is kept in ``left_out``.
    """

    def __init__(self, root: str, transform: Callable | None = None, on_bad_image: str = "skip",
                 name_skips: bool = False):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise UserError(f"data.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got '{on_bad_image}'")
        if not Path(root).is_dir():
            raise UserError(f"image folder not found: {root}")
        self.left_out: list[LeftOut] = []
        try:
            super().__init__(root, transform=transform, loader=load_rgb, allow_empty=True)
        except FileNotFoundError as e:
            raise UserError(f"no images found under {root} ({e}); point data.path at an ImageFolder tree") from None
        # a class folder without a single image is a mistake (a wrong path, a failed copy): say which one
        counts = Counter(self.targets)
        for index, name in enumerate(self.classes):
            if counts[index] == 0 and not name.startswith("."):
                folder = Path(root) / name
                inside = [item.reason for item in self.left_out if item.path.startswith(f"{folder}{os.sep}")]
                why = (f" ({len(inside)} file(s) left out: {Counter(inside).most_common(1)[0][0]}…)"
                       if inside else "")
                raise UserError(f"class folder {folder} is empty{why}; add its images or remove the folder")
        self.on_bad_image = on_bad_image
        self.name_skips = name_skips

    def make_dataset(self, directory: Any, class_to_idx: dict[str, int], extensions: Any = None,  # type: ignore[override]
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        """torchvision's hook for listing files: ours walks each real folder once and records what it skips."""
        samples, self.left_out = list_images(Path(directory), class_to_idx)
        return samples

    def __getitem__(self, index: int) -> Any:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except BadImage as e:
            if self.on_bad_image == "error":
                raise UserError(f"unreadable image {e}; delete or replace it, or set data.on_bad_image=skip") from None
            log.warning("skipping unreadable image %s", e)
            return Skipped(path, str(e).removeprefix(f"{path}: ")) if self.name_skips else None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


class TorchvisionCIFAR10(Dataset):
    """torchvision's CIFAR-10 (downloaded once) with the ImageFolder attributes the pipeline uses."""

    def __init__(self, root: Path, train: bool, transform: Callable | None = None):
        from torchvision.datasets import CIFAR10

        try:
            self._ds = CIFAR10(str(root), train=train, download=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise UserError(f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); without internet, "
                            "set data.path to an ImageFolder directory or a .tar.gz of one") from None
        self.transform = transform
        self.classes = list(self._ds.classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = list(self._ds.targets)
        split = "train" if train else "val"
        self.samples = [(f"{split}/{i:05d}", t) for i, t in enumerate(self.targets)]
        self.root = str(root)
        self.left_out: list[LeftOut] = []

    def __len__(self) -> int:
        return len(self.targets)

    def content_digest(self) -> str:
        """sha256 of the pixels (the feature cache's key: these images are not files of their own)."""
        digest = hashlib.sha256(self._ds.data.tobytes())
        digest.update(bytes(self.targets))
        return digest.hexdigest()

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        image = Image.fromarray(self._ds.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def resolve_root(path: str, cache_dir: str = "") -> Path:
    """The local folder holding ``train/``, ``val/``… for a directory or an archive path."""
    if is_archive(path) or (Path(path).is_file()):
        root = extract_archive(path, cache_dir or None)
    else:
        root = Path(path)
        if not root.exists():
            raise UserError(f"data path not found: {path}; give an ImageFolder directory, a .tar/.tar.gz of one, "
                            "or 'cifar10'")
        if not root.is_dir():
            raise UserError(f"data path {path} is neither a directory nor a tar archive")
    # an archive (or folder) holding one top folder, e.g. cifar10/{train,val}: descend into it
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir() or any((root / s).is_dir() for s in ("train", "val", "test")):
            return root
        root = entries[0]


def build_dataset(path: str, split: str, transform: Callable | None = None, cache_dir: str = "",
                  on_bad_image: str = "skip", limit: int = 0, seed: int = 0, name_skips: bool = False) -> Dataset:
    """An ImageFolder-like dataset (``classes``, ``targets``, ``samples``) for ``split`` of ``path``.

    ``limit`` keeps a seeded random subset of that many images (quick runs and tests); ``name_skips``: see
    :class:`SafeImageFolder`.
    """
    if path == "cifar10":
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        ds: Dataset = TorchvisionCIFAR10(root / "cifar10-torchvision", train=(split == "train"), transform=transform)
    else:
        root = resolve_root(path, cache_dir)
        split_dir = root / split
        if not split_dir.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise UserError(f"split folder '{split}' not found in {path} (found: {', '.join(found) or 'nothing'}); "
                            "the layout is <root>/<split>/<class>/<image>")
        ds = SafeImageFolder(str(split_dir), transform=transform, on_bad_image=on_bad_image, name_skips=name_skips)
    if limit and limit < len(ds.targets):
        order = list(range(len(ds.targets)))
        random.Random(seed).shuffle(order)
        keep = sorted(order[:limit])
        ds.samples = [ds.samples[i] for i in keep]
        ds.targets = [ds.targets[i] for i in keep]
        if isinstance(ds, SafeImageFolder):
            ds.imgs = ds.samples
        else:
            ds._ds.data = ds._ds.data[keep]
            ds._ds.targets = list(ds.targets)
    return ds


def left_out_record(dataset: Any) -> dict:
    """What the listing of ``dataset`` left out, as JSON: ``{"count", "by_reason", "files"}`` (1000 files named)."""
    items = list(getattr(dataset, "left_out", []))
    return {"count": len(items), "by_reason": dict(Counter(i.reason for i in items).most_common()),
            "files": [{"path": i.path, "reason": i.reason} for i in items[:MAX_NAMED]]}


def skip_bad_collate(batch: list) -> Any:
    """default_collate without the ``None`` items of skipped images; adds nothing to the batch structure."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None

