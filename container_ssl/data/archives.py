"""Archives of ImageFolder trees (.tar, .tar.gz, .tgz), extracted once into a cache.

Why: datasets often travel as one archive (the shared CIFAR-10 JPEGs, ImageNet shards). Extracting on
every run wastes minutes, so the extraction is keyed by the archive's content hash and reused. The hash
of a large archive is itself remembered per (path, size, mtime) so a second run does not re-read it.
Extraction goes to a temp folder renamed into place, so a killed run never leaves a half-extracted cache;
the temp folder is removed on any error (Ctrl-C included), and one left by a killed process on this host
is removed by the next extraction. The archive is untrusted: :mod:`.untar` writes only folders and
regular files inside the temp folder, within size and member-count limits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import UserError
from .untar import Limits, extract_tar

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# extractions made before members were vetted one by one (tarfile's filter alone) are not reused
LAYOUT = "v2"
_TEMP = re.compile(r"^\.extract-(\d+)@(.+)-[a-z0-9_]+$")  # .extract-PID@HOST-RANDOM, see _temp_prefix


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def default_cache_dir() -> Path:
    """``$CONTAINER_SSL_CACHE`` or ``$XDG_CACHE_HOME/container-ssl`` (``~/.cache/container-ssl``)."""
    env = os.environ.get("CONTAINER_SSL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "container-ssl"


def content_hash(path: Path, cache_dir: Path) -> str:
    """sha256 of the file, remembered in ``cache_dir/hashes.json`` by (path, size, mtime)."""
    st = path.stat()
    memo_file = cache_dir / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = {}
    if memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass
    return memo[key]


def extract_archive(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Extract ``path`` (once) and return the folder holding its contents."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data archive not found: {path}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if not tarfile.is_tarfile(path):
        raise UserError(f"data archive {path} is not a tar archive; give an ImageFolder directory "
                        "or a .tar/.tar.gz of one")
    target = cache / "extracted" / f"{LAYOUT}-{content_hash(path, cache)[:16]}"
    if (target / ".complete").is_file():
        return target
    limits = Limits.from_env()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(), dir=target.parent))
    log.info("extracting %s to %s (once)", path, target)
    try:
        try:
            stats = extract_tar(path, tmp, limits)
            (tmp / ".complete").write_text(json.dumps({"archive": str(path), **stats.as_dict()}))
            if not target.exists():
                os.replace(tmp, target)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            if (target / ".complete").is_file():  # a concurrent run (another rank) finished first
                return target
            raise UserError(f"could not extract data archive {path}: {e}; check the file or re-download it") \
                from None
    finally:  # also on UserError and KeyboardInterrupt: no half-extracted folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _temp_prefix() -> str:
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    return f".extract-{os.getpid()}@{host}-"


def _remove_stale_temps(folder: Path) -> None:
    """Remove temp folders of extractions on this host whose process is gone (killed with SIGKILL, say).

    A temp folder of another host (a cache on a shared file system) or of a live process is left alone.
    """
    host = _temp_prefix().split("@", 1)[1][:-1]
    for entry in folder.glob(".extract-*"):
        m = _TEMP.match(entry.name)
        if m and m.group(2) == host and not _alive(int(m.group(1))):
            log.info("removing %s, left by an extraction that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a process of another user has it
        return True
    return True
