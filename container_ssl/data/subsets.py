"""Class-balanced label fractions (1 %, 10 % …) for low-data evaluation, and the files that pin them.

Why: semi-supervised numbers are only comparable when every method sees the *same* labelled images.
The subset is chosen per class (exactly ``round(fraction * n_c)`` images, at least one, so rare classes
never vanish) from a seeded generator, so the same ``(targets, fraction, seed)`` always gives the same
images on any machine. The choice is also written to a text file, one path per line relative to the
dataset root (the format of the public 1 %/10 % ImageNet lists), so a run can be reproduced exactly, or
an external list can be used instead.

A file name may hold anything but ``/`` and NUL, including a newline, so a plain line cannot carry every
name. A name that would not survive one (a control or line-separator character, surrounding spaces, a
leading ``#`` or ``"``, a backslash, bytes that are not UTF-8) is written as a JSON string on its line
(``"cat/two\\nlines.jpg"``); every other name stays a plain line, so ordinary lists look as before and old
lists read unchanged.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError

__all__ = ["read_subset_file", "select_subset", "write_subset_file"]


def select_subset(targets: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Sorted indices of a class-balanced subset: ``max(1, round(fraction * n_c))`` images of each class ``c``.

    A torch generator (not Python's ``random``) draws the permutation so the result does not depend on the
    interpreter's hash seed or version.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise UserError(f"label fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(targets):
        by_class[int(label)].append(index)
    generator = torch.Generator().manual_seed(int(seed))
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        count = min(len(members), max(1, round(fraction * len(members))))
        order = torch.randperm(len(members), generator=generator)[:count]
        chosen.extend(members[i] for i in order.tolist())
    return sorted(chosen)


def write_subset_file(path: str | os.PathLike, samples: Sequence[tuple[str, int]], indices: Sequence[int]) -> Path:
    """Write the chosen images, one path per line relative to the dataset's common root (``class/file.jpg``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = _common_root(samples)
    lines = [_encode(_relative(samples[i][0], root)) for i in indices]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_subset_file(path: str | os.PathLike, samples: Sequence[tuple[str, int]]) -> list[int]:
    """Indices (sorted) of the images listed in ``path``; names not in ``samples`` raise one UserError.

    Lines may be relative paths (``class/file.jpg``) or bare file names as in the public ImageNet lists
    (``n01440764_10026.JPEG``), as long as the bare names are unique; blank lines and ``#`` comments are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"subset file not found: {path}")
    wanted = _decode_lines(path)
    if not wanted:
        raise UserError(f"subset file {path} lists no images")
    root = _common_root(samples)
    by_relative = {_relative(p, root): i for i, (p, _) in enumerate(samples)}
    by_name: dict[str, int] = {}
    for i, (p, _) in enumerate(samples):
        by_name[os.path.basename(p)] = -1 if os.path.basename(p) in by_name else i
    indices, missing = set(), []
    for name in wanted:
        index = by_relative.get(name, by_name.get(name) if "/" not in name else None)
        if index is None or index < 0:
            missing.append(name)
        else:
            indices.add(index)
    if missing:
        shown = ", ".join(_encode(m) for m in missing[:5]) + (f" … ({len(missing)} in all)" if len(missing) > 5 else "")
        raise UserError(f"subset file {path} names {len(missing)} image(s) not in the dataset: {shown}; "
                        "check that it was written for this dataset and split")
    return sorted(indices)


def _common_root(samples: Sequence[tuple[str, int]]) -> str:
    """The split folder: the parent of the class folders (so lines read ``class/file``)."""
    if not samples:
        return ""
    parents = {os.path.dirname(os.path.dirname(p)) for p, _ in samples}
    return parents.pop() if len(parents) == 1 else os.path.commonpath([p for p, _ in samples])


def _relative(p: str, root: str) -> str:
    return os.path.relpath(p, root).replace(os.sep, "/") if root else p


def _encode(name: str) -> str:
    """``name`` as a plain line when it reads back unchanged, else as a JSON string (ASCII, one line)."""
    plain = (name == name.strip() and name[:1] not in ("#", '"') and "\\" not in name
             and all(c.isprintable() for c in name))
    return name if plain else json.dumps(name)


def _decode_lines(path: Path) -> list[str]:
    """The names listed in ``path``: plain lines (backslashes read as ``/``) and JSON-string lines exactly.

    Undecodable bytes are kept as the surrogate escapes ``os`` uses for such file names, so they still match.
    """
    names = []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith('"'):
            names.append(line.replace("\\", "/"))
            continue
        try:
            name = json.loads(line)
        except ValueError:
            name = None
        if not isinstance(name, str):
            raise UserError(f"subset file {path} line {number} starts with a quote but is not one JSON string; "
                            "quote the whole name as JSON or remove the leading quote")
        names.append(name)
    return names
