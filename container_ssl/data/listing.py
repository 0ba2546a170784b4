"""Listing the images of an ImageFolder split: each real folder once, and a record of every file left out.

Why not torchvision's own walk: it follows symbolic links without remembering where it has been, so a
``loop -> ..`` inside a class folder lists every image once per trip round the loop (41 copies of each
in one report), and a link to a sibling class lists that class's images a second time under the wrong
label. Files whose extension is not one torchvision expects (``.gif``…) vanished without a count.

Here every directory is identified by ``(st_dev, st_ino)``. All real (non-link) folders are walked first;
symlinked folders are followed afterwards, each only if its target has not been listed yet, so a loop or
a link into another class is skipped, counted and named, while a link to images stored elsewhere is
still followed once. Every file left out (not an image type Pillow can open, hidden, a broken link, a
repeated folder) gets a :class:`LeftOut` record with its reason, which the dataset exposes so that run
summaries and evaluators can say what was left out and why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import UserError

log = logging.getLogger(__name__)

__all__ = ["LeftOut", "list_images"]

REPEATED_FOLDER = "symlinked folder already listed (a loop, or a link to another folder of the tree)"


@dataclass(frozen=True)
class LeftOut:
    """A file or folder of the tree that is not in the dataset, and why."""

    path: str
    reason: str


def list_images(split_dir: Path, class_to_idx: Mapping[str, int]) -> tuple[list[tuple[str, int]], list[LeftOut]]:
    """``(samples, left_out)``: ``(path, label)`` in ImageFolder's order (class, folder, name) and the rest."""
    Image.init()  # every format Pillow can open, not only save (so not .pdf)
    walker = _Walker(frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))
    roots: dict[tuple[int, int], str] = {}
    for name in sorted(class_to_idx):
        key = _identity(os.stat(split_dir / name))
        if key in roots:
            raise UserError(f"class folders {split_dir / roots[key]} and {split_dir / name} are the same folder "
                            "(one links to the other); remove one of them")
        roots[key] = name
    walker.seen.update(roots)
    # the split folder and its ancestors hold the whole tree: a link to any of them is a loop
    walker.seen.update(_identity(os.stat(folder)) for folder in (split_dir, *split_dir.resolve().parents))
    for name in sorted(class_to_idx):
        walker.walk(split_dir / name, class_to_idx[name])
    while walker.links:  # symlinked folders last, so the real folders they may point at are already known
        label, link = walker.links.pop(0)
        try:
            key = _identity(os.stat(link))
        except OSError:
            walker.left_out.append(LeftOut(link, "broken symlink"))
            continue
        if key in walker.seen:
            walker.left_out.append(LeftOut(link, REPEATED_FOLDER))
            continue
        walker.seen.add(key)
        walker.walk(Path(link), label)
    walker.found.sort()
    samples = [(os.path.join(folder, name), label) for label, folder, name in walker.found]
    if walker.left_out:
        log.warning("left out %d file(s)/folder(s) under %s: %s", len(walker.left_out), split_dir,
                    _summary(walker.left_out, split_dir))
    return samples, walker.left_out


class _Walker:
    """The state of one listing: directories seen, images found, links still to follow, files left out."""

    def __init__(self, extensions: frozenset[str]):
        self.extensions = extensions
        self.seen: set[tuple[int, int]] = set()
        self.found: list[tuple[int, str, str]] = []
        self.links: list[tuple[int, str]] = []
        self.left_out: list[LeftOut] = []

    def walk(self, top: Path, label: int) -> None:
        """List ``top`` and its real subfolders; symlinked subfolders are queued in ``links``."""
        stack = [str(top)]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                self.left_out.append(LeftOut(folder, f"unreadable folder ({e.strerror or e})"))
                continue
            for entry in entries:  # is_dir() and is_file() follow a symlink; a broken one is neither
                suffix = os.path.splitext(entry.name)[1].lower()
                if entry.is_dir() and entry.is_symlink():
                    self.links.append((label, entry.path))
                elif entry.is_dir():
                    key = _identity(entry.stat(follow_symlinks=False))
                    if key in self.seen:  # a bind mount of a folder already listed
                        self.left_out.append(LeftOut(entry.path, REPEATED_FOLDER))
                    else:
                        self.seen.add(key)
                        stack.append(entry.path)
                elif not entry.is_file():
                    reason = "broken symlink" if entry.is_symlink() else "not a regular file"
                    self.left_out.append(LeftOut(entry.path, reason))
                elif entry.name.startswith("."):
                    self.left_out.append(LeftOut(entry.path, "hidden file"))
                elif suffix not in self.extensions:
                    reason = f"not an image type Pillow reads ({suffix or 'no extension'})"
                    self.left_out.append(LeftOut(entry.path, reason))
                else:
                    self.found.append((label, folder, entry.name))


def _summary(left_out: list[LeftOut], root: Path, examples: int = 3) -> str:
    """``"2 <reason> (a/x, b/y); 1 <reason> (c/z)"``: counts per reason with a few names each."""
    by_reason: dict[str, list[str]] = {}
    for item in left_out:
        by_reason.setdefault(item.reason, []).append(os.path.relpath(item.path, root))
    parts = []
    for reason, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:examples]) + (", …" if len(names) > examples else "")
        parts.append(f"{len(names)} {reason} ({shown})")
    return "; ".join(parts)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
