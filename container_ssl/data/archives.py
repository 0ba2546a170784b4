"""Archives of ImageFolder trees (.tar, .tar.gz, .tgz), extracted once into a cache.

Why: datasets often travel as one archive (the shared CIFAR-10 JPEGs, ImageNet shards). Extracting on
every run wastes minutes, so the extraction is keyed by the archive's content hash and reused. The hash
of a large archive is itself remembered per (path, size, mtime) so a second run does not re-read it.
Extraction goes to a temp folder renamed into place, so a killed run never leaves a half-extracted cache,
and uses tarfile's ``data`` filter so an archive cannot write outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


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
    target = cache / "extracted" / content_hash(path, cache)[:16]
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    log.info("extracting %s to %s (once)", path, target)
    try:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(str(path))
        if target.exists():  # a concurrent run (another rank) finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / ".complete").is_file():
            return target
        raise UserError(f"could not extract data archive {path}: {e}; check the file or re-download it") from None
    return target
