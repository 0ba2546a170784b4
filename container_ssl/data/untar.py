"""Extract an untrusted tar of an ImageFolder tree: folders and regular files only, vetted one member at a time.

Why not ``tarfile.extractall(filter="data")``: the filter decides with ``os.path.realpath``, which on Pythons
without the fix for CVE-2025-4517 (3.11.7 among them) stops resolving a path longer than PATH_MAX. A chain
of symlinks through nested long-named folders then passes the check while the kernel follows it outside,
and a later hardlink plus a regular member of the same name overwrites any file the user can write. An
ImageFolder needs none of that, so this module does the whole job itself, the same on every Python:

* only folders and regular files are created. Symlinks, hardlinks, character/block devices, FIFOs and
  unknown member types are skipped, counted and logged. Since no link is ever created, no later member can
  be redirected through one;
* a member name that is absolute, has a ``..`` component or a NUL byte refuses the whole archive (no
  ImageFolder archive has one: it is hostile or broken);
* every folder on the way is checked to be a real folder (``lstat``) whose resolved path lies inside the
  destination; files are written from ``tar.extractfile`` with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so an
  existing entry (a later copy of the same member, as ``tar -r`` makes) is replaced only when it is a
  regular file this extraction wrote;
* one archive may expand to at most :data:`DEFAULT_MAX_BYTES` of file data and :data:`DEFAULT_MAX_MEMBERS`
  members (``$CONTAINER_SSL_ARCHIVE_MAX_BYTES`` / ``$CONTAINER_SSL_ARCHIVE_MAX_MEMBERS`` raise them), checked
  before a member is written, so a small ``.tar.gz`` cannot fill the disk or the inode table. The members
  are read one by one and not kept (``tarfile`` would otherwise hold every header in memory).

Member permissions, owners and times are not restored: the files are read-only inputs keyed by the
archive's content hash, and a mode from the archive (setuid, world-writable) is one more thing to vet.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

MAX_BYTES_ENV = "CONTAINER_SSL_ARCHIVE_MAX_BYTES"
MAX_MEMBERS_ENV = "CONTAINER_SSL_ARCHIVE_MAX_MEMBERS"
# Generous on purpose: the largest public ImageFolder archive in use, ImageNet-21k (fall11_whole.tar), is
# 1.31 TB in 14.2 M images (ImageNet-1k's train tar: 138 GB, 1.28 M); 2 TB / 20 M members takes it with
# ~50% to spare while a decompression bomb still stops at a bound the user has chosen.
DEFAULT_MAX_BYTES = 2 * 10**12
DEFAULT_MAX_MEMBERS = 20_000_000

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_SKIPPED_KIND = ((tarfile.TarInfo.issym, "symlink"), (tarfile.TarInfo.islnk, "hardlink"),
                 (tarfile.TarInfo.ischr, "character device"), (tarfile.TarInfo.isblk, "block device"),
                 (tarfile.TarInfo.isfifo, "FIFO"))


@dataclass(frozen=True)
class Limits:
    """What one archive may expand to: file bytes and members (of any type, skipped ones included)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        return cls(max_bytes=_env_limit(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
                   max_members=_env_limit(env, MAX_MEMBERS_ENV, DEFAULT_MAX_MEMBERS))


def _env_limit(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if any(c in text for c in ".eE") else int(text)
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise UserError(f"${name}={text}: expected a positive whole number (e.g. {name}={default}); "
                        "unset it for the default")
    return value


@dataclass
class ExtractStats:
    """What an extraction wrote and what it left out."""

    files: int = 0
    folders: int = 0
    bytes: int = 0
    members: int = 0
    skipped: Counter = field(default_factory=Counter)  # kind -> count
    skipped_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": self.files, "folders": self.folders, "bytes": self.bytes, "members": self.members,
                "skipped": dict(self.skipped)}


def extract_tar(archive: Path, dest: Path, limits: Limits) -> ExtractStats:
    """Extract ``archive`` into the existing empty folder ``dest``.

    Raises :class:`UserError` for an archive this module refuses (a name outside ``dest``, a limit, a
    member whose type clashes with an earlier one); read and write errors (``tarfile.TarError``,
    ``OSError``, ...) propagate for the caller to word. ``dest`` is left as it is on any error: the caller
    owns it and removes it.
    """
    writer = _Writer(archive, dest)
    stats = ExtractStats()
    with tarfile.open(archive) as tar:
        while True:
            member = tar.next()
            if member is None:
                break
            tar.members.clear()  # tarfile keeps every header it read; 20 M of them would fill the memory
            stats.members += 1
            if stats.members > limits.max_members:
                raise UserError(_limit_message(archive, f"more than {limits.max_members:,} members",
                                               MAX_MEMBERS_ENV, limits.max_members))
            parts = _member_parts(archive, member.name)
            if member.isdir():
                if parts:
                    writer.folder(parts)
                    stats.folders += 1
            elif member.isreg():
                if stats.bytes + member.size > limits.max_bytes:
                    raise UserError(_limit_message(archive, f"more than {limits.max_bytes:,} bytes",
                                                   MAX_BYTES_ENV, limits.max_bytes))
                if not parts:
                    raise UserError(f"data archive {archive}: member {member.name!r} is a file without a name; "
                                    "re-create the archive")
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has a file object
                with source:
                    writer.file(parts, source)
                stats.files += 1
                stats.bytes += member.size
            else:
                kind = next((k for test, k in _SKIPPED_KIND if test(member)), f"member of type {member.type!r}")
                stats.skipped[kind] += 1
                if len(stats.skipped_examples) < 3:
                    link = f" -> {_short(member.linkname)!r}" if member.issym() or member.islnk() else ""
                    stats.skipped_examples.append(f"{kind} {_short(member.name)!r}{link}")
        # read to the end: a .tar.gz checks its CRC only there, and a corrupted stored block is otherwise
        # extracted as silent garbage (tar stops at its end-of-archive marker, before the gzip trailer)
        while tar.fileobj.read(1 << 20):
            pass
    if stats.skipped:
        kinds = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in sorted(stats.skipped.items()))
        log.warning("data archive %s: skipped %d member(s) that are neither folders nor regular files (%s), "
                    "e.g. %s; an ImageFolder needs only folders and image files",
                    archive, sum(stats.skipped.values()), kinds, "; ".join(stats.skipped_examples))
    return stats


def _short(name: str, n: int = 60) -> str:
    return name if len(name) <= n else f"{name[: n // 2 - 2]}...{name[-(n // 2 - 1):]}"


def _limit_message(archive: Path, what: str, env: str, value: int) -> str:
    return (f"data archive {archive} expands to {what} (the limit); if you trust it, raise the limit, "
            f"e.g. {env}={value * 4}")


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The member's path components below the destination; refuses names that leave it."""
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if name.startswith("/") or ".." in parts or "\x00" in name:
        raise UserError(f"data archive {archive}: member {name!r} points outside the extraction folder "
                        "(absolute path, '..' or NUL); refusing the archive, re-create it with relative names")
    return parts


class _Writer:
    """Creates folders and regular files strictly inside ``dest``."""

    def __init__(self, archive: Path, dest: Path):
        self.archive = archive
        self.dest = Path(os.path.realpath(dest))
        self.known: set[tuple[str, ...]] = {()}  # folders already checked

    def folder(self, parts: tuple[str, ...]) -> Path:
        """``dest/parts`` as a real folder inside ``dest`` (created with its parents when missing)."""
        for i in range(1, len(parts) + 1):
            sub = parts[:i]
            if sub in self.known:
                continue
            path = self.dest.joinpath(*sub)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise UserError(f"data archive {self.archive}: {'/'.join(sub)!r} is both a file and a "
                                    "folder in the archive; re-create it") from None
            resolved = os.path.realpath(path)
            if os.path.commonpath([resolved, self.dest]) != str(self.dest):  # only a race could get here
                raise UserError(f"data archive {self.archive}: folder {'/'.join(sub)!r} resolves outside the "
                                f"extraction folder ({resolved}); refusing the archive")
            self.known.add(sub)
        return self.dest.joinpath(*parts)

    def file(self, parts: tuple[str, ...], source) -> None:
        """Write ``source`` to ``dest/parts``; never through a link, never over anything but a regular file."""
        path = self.folder(parts[:-1]) / parts[-1]
        try:
            fd = os.open(path, _FILE_FLAGS, 0o644)
        except FileExistsError:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise UserError(f"data archive {self.archive}: {'/'.join(parts)!r} is both a folder and a "
                                "file in the archive; re-create it") from None
            os.unlink(path)  # a later copy of the same member wins, as with tar
            fd = os.open(path, _FILE_FLAGS, 0o644)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
