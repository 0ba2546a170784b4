"""The key of the feature cache: everything that determines a dataset's features, and nothing else.

Why this much: features are reused across kNN, linear probes and runs, so a key that misses any input
silently reports the figures of other images. An earlier key (weights + file names relative to the
data root) returned the features of another dataset with the same layout, and of images rewritten in
place. The key now covers:

* the weights and how the backbone was built (passed in as ``extra`` by the cache);
* the transform, described field by field (size, resize, crop, interpolation, mean/std…);
* every file: relative name, label, size and modification time in nanoseconds, and a sha256 of its
  bytes when the files total at most :data:`CONTENT_DIGEST_MAX_BYTES` (``benchmarks/feature_key_bench.py``:
  7 s warm, 29 s cold for the 55k CIFAR-10 files on a loaded 2-core machine, 3-12% of merely decoding
  them; reading ImageNet in full on every hit would cost far more). Above that, the key adds the files'
  ``st_ctime_ns`` and ``(st_dev, st_ino)`` instead: a rewrite in place changes ``ctime`` even when the
  size and ``mtime`` are put back, so only a copy of the data under another name costs a recomputation;
* datasets that are not files on disk: their own ``content_digest()`` (torchvision's CIFAR-10 arrays),
  else a digest of every loaded item.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["CONTENT_DIGEST_MAX_BYTES", "dataset_fingerprint", "describe", "file_identities"]

CONTENT_DIGEST_MAX_BYTES = 2 << 30  # 2 GiB: CIFAR, STL, Imagenette; not ImageNet (6.4 GB val)


def dataset_fingerprint(dataset: Any, extra: dict | None = None, content: bool | None = None) -> str:
    """64 hex digits naming a dataset split as evaluated: its files' identity, labels, classes, transform.

    ``content``: hash the files' bytes (True), identify them by ``stat`` only (False), or decide by the
    total size (None, see the module docstring).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    digest.update(f"|classes={list(getattr(dataset, 'classes', []))}|n={len(dataset)}|".encode())
    digest.update(describe(getattr(dataset, "transform", None)).encode())
    own = getattr(dataset, "content_digest", None)
    samples = list(getattr(dataset, "samples", []))
    if callable(own):
        digest.update(f"|content={own()}".encode())
        digest.update(str([label for _, label in samples]).encode())
    elif samples and all(os.path.isfile(path) for path, _ in samples):
        root = str(getattr(dataset, "root", "")) or os.path.commonpath([p for p, _ in samples])
        for line in file_identities(samples, root, content):
            digest.update(line.encode("utf-8", "surrogateescape"))
    else:
        _update_with_items(digest, dataset)
    return digest.hexdigest()


def file_identities(samples: Iterable[tuple[str, int]], root: str, content: bool | None = None) -> list[str]:
    """One line per file: name relative to ``root``, label, size, mtime_ns, then its sha256 or ctime/inode."""
    samples = list(samples)
    stats = [os.stat(path) for path, _ in samples]
    if content is None:
        content = sum(st.st_size for st in stats) <= CONTENT_DIGEST_MAX_BYTES
    prefix = os.path.join(root, "")
    lines = []
    for (path, label), st in zip(samples, stats):
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)  # relpath is slow
        tail = _sha256(path) if content else f"ctime={st.st_ctime_ns} ino={st.st_dev}:{st.st_ino}"
        lines.append(f"{json.dumps(rel)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\t{tail}\n")
    return lines


def describe(obj: Any) -> str:
    """A repr without memory addresses (objects without their own repr are described by their fields)."""
    text = repr(obj)
    if " at 0x" in text and hasattr(obj, "__dict__"):
        fields = sorted((k, describe(v)) for k, v in vars(obj).items())
        text = f"{type(obj).__qualname__}{fields}"
    return text


def _sha256(path: str) -> str:
    """One read, one hash: faster than ``hashlib.file_digest`` for small images (no 256 KiB buffer each)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _update_with_items(digest: Any, dataset: Any) -> None:
    """Hash what the model would see: every item's image (after the transform) and label."""
    for index in range(len(dataset)):
        item = dataset[index]
        if item is None:
            digest.update(b"|skipped")
            continue
        image, label = item
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        digest.update(f"|{array.dtype}{array.shape}{label}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
