"""Drill 4c: a hostile data archive writes and changes nothing outside the cache, and leaves no temp folder.

Why: ``data.path=some.tar`` is often a download. Each archive here is an attack or a broken download built
member by member (see tests/data/archive_builders.py for the shapes); the sandbox around the cache holds the
file the attacks aim at, and every entry in it is compared before and after. For reference the first row
runs the old extraction (``tarfile`` with ``filter="data"`` alone) on the CVE-2025-4517 archive: on a
Python without the fix it escapes; whatever it does is printed, not asserted. The refusals also go through
``container-ssl pretrain`` once, for the one-line error and exit status 2.
"""

from __future__ import annotations

import logging
import platform
import random
import tarfile
from pathlib import Path

import pytest

from container_ssl.cli import main as cli_main
from container_ssl.data import untar
from container_ssl.data.archives import extract_archive
from container_ssl.data.untar import MAX_BYTES_ENV, MAX_MEMBERS_ENV
from container_ssl.errors import UserError
from tests.data.archive_builders import (
    add,
    completion,
    cve_2025_4517,
    make_tar,
    snapshot,
)

from .figures import record, table
from .helpers import one_line_error, short, tiny_args


def _sandbox(root: Path) -> tuple[Path, Path]:
    """A sandbox with the target file; the cache inside it (so the attacks' ``../../..`` lands here)."""
    root.mkdir(parents=True)
    (root / "victim.txt").write_text("original\n")
    (root / "outside").mkdir()
    return root, root / "cache"


def _changes(before: dict, after: dict) -> str:
    new = len(after.keys() - before.keys())
    changed = sum(1 for k in before.keys() & after.keys() if before[k] != after[k])
    gone = len(before.keys() - after.keys())
    return "none" if not (new or changed or gone) else f"{new} new, {changed} changed, {gone} removed"


def _hostile() -> dict[str, tuple]:
    """kind -> (builder, tar mode, env) of each drilled archive."""
    noise = bytes(random.Random(0).randrange(256) for _ in range(40000))

    def links(tar):
        add(tar, "train/a/ok.jpg", data=b"image")
        add(tar, "etc", tarfile.SYMTYPE, link="/etc")
        add(tar, "out", tarfile.SYMTYPE, link="../" * 3 + "outside")
        add(tar, "out/new.txt", data=b"through a symlink")

    def hardlink(tar):
        add(tar, "train/a/ok.jpg", data=b"image")
        add(tar, "hard", tarfile.LNKTYPE, link="../" * 3 + "victim.txt")
        add(tar, "hard", data=b"overwritten\n")

    def special(tar):
        add(tar, "train/a/ok.jpg", data=b"image")
        add(tar, "null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add(tar, "loop0", tarfile.BLKTYPE, devmajor=7, devminor=0)
        add(tar, "fifo", tarfile.FIFOTYPE)

    def files(tar):
        for i in range(4):
            add(tar, f"train/a/{i}.jpg", data=noise[i:])

    return {
        "CVE-2025-4517 shape (16 nested 247-char dirs, symlink chain, hardlink out + overwrite)":
            (cve_2025_4517, "w", {}),
        "'../../../outside/evil.txt' member": (lambda t: add(t, "../../../outside/evil.txt", data=b"x"), "w", {}),
        "absolute member '$SANDBOX/outside/evil.txt'": (None, "w", {}),  # built with the sandbox's path
        "symlink to /etc, symlink out + a file through it": (links, "w", {}),
        "hardlink to an outside file + a member writing through it": (hardlink, "w", {}),
        "dangling hardlink": (lambda t: add(t, "x.jpg", tarfile.LNKTYPE, link="missing.jpg"), "w", {}),
        "character + block device, FIFO": (special, "w", {}),
        "8 MiB of zeros in a 8 KiB .tar.gz, byte limit 1 MiB":
            (lambda t: add(t, "zeros.jpg", data=bytes(8 << 20)), "w:gz", {MAX_BYTES_ENV: str(1 << 20)}),
        "4 members, member limit 3": (files, "w", {MAX_MEMBERS_ENV: "3"}),
        "truncated .tar.gz": (files, "truncate", {}),
        "corrupted .tar.gz (300 bytes zeroed mid-way)": (files, "garble", {}),
        "Ctrl-C during the extraction": (files, "interrupt", {}),
    }


def _build(path: Path, root: Path, build, mode: str) -> Path:
    """Write the drilled archive; ``mode`` may also be truncate/garble (a damaged .tar.gz) or interrupt."""
    if build is None:  # the absolute member names this sandbox
        def build(tar):
            add(tar, str(root / "outside" / "evil.txt"), data=b"x")
    if mode in ("truncate", "garble"):
        good = make_tar(path, build, mode="w:gz").read_bytes()
        half = len(good) // 2
        path.write_bytes(good[:half] if mode == "truncate" else good[:half] + bytes(300) + good[half + 300:])
        return path
    return make_tar(path, build, mode="w" if mode == "interrupt" else mode)


def _extract(path: Path, root: Path, cache: Path, caplog) -> str:
    """Extract through the package; the outcome as one table cell."""
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING):
            done = completion(extract_archive(path, cache))
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return "refused: " + short(str(e).replace(str(path), "$ARCHIVE").replace(str(root), "$SANDBOX"), 90)
    except KeyboardInterrupt:
        return "interrupted (KeyboardInterrupt re-raised)"
    if done["skipped"]:
        assert "skipped" in caplog.text and str(path) in caplog.text, "a skip was not logged"
    skipped = ", ".join(f"{k}: {n}" for k, n in sorted(done["skipped"].items())) or "nothing"
    return f"extracted {done['files']} file(s); skipped, logged and counted: {skipped}"


def _old_way(tmp_path: Path) -> tuple[str, ...]:
    """The extraction before this drill: tarfile's data filter alone, on the CVE-2025-4517 archive."""
    root, cache = _sandbox(tmp_path / "reference")
    dest = cache / "extracted" / "x"
    dest.mkdir(parents=True)
    archive = make_tar(tmp_path / "reference.tar", cve_2025_4517)
    before = snapshot(root, cache)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        outcome = "extracted"
    except (tarfile.TarError, OSError) as e:
        outcome = f"refused: {type(e).__name__}"
    return (f"[old way: Python {platform.python_version()} tarfile filter='data'] CVE-2025-4517 shape", outcome,
            _changes(before, snapshot(root, cache)), "-")


@pytest.mark.reliability
def test_hostile_archives_write_nothing_outside(tmp_path, monkeypatch, capfd, caplog):
    rows = [_old_way(tmp_path)]
    for i, (kind, (build, mode, env)) in enumerate(_hostile().items()):
        root, cache = _sandbox(tmp_path / f"s{i}")
        path = _build(tmp_path / f"a{i}.tar.gz", root, build, mode)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if mode == "interrupt":
            def interrupted(*args, **kwargs):
                raise KeyboardInterrupt
            monkeypatch.setattr(untar.shutil, "copyfileobj", interrupted)
        before = snapshot(root, cache)
        outcome = _extract(path, root, cache, caplog)
        monkeypatch.undo()
        outside = _changes(before, snapshot(root, cache))
        temps = sorted((cache / "extracted").glob(".extract-*"))
        assert outside == "none", f"{kind}: {outside}"
        assert (root / "victim.txt").read_text() == "original\n"
        assert temps == [], f"{kind}: {temps}"
        rows.append((kind, outcome, outside, str(len(temps))))

    # refusals through the command line: one line, exit status 2
    dotdot = make_tar(tmp_path / "dotdot.tar", lambda t: add(t, "../../../outside/evil.txt", data=b"x"))

    def two(tar):
        for j in range(2):
            add(tar, f"{j}.jpg", data=b"x")

    cli_cache = tmp_path / "cli-cache"
    for kind, archive, env in (("'../' member", dotdot, {}),
                               ("2 members, member limit 1", make_tar(tmp_path / "two.tar", two), {MAX_MEMBERS_ENV: "1"})):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capfd.readouterr()
        status = cli_main(tiny_args(archive, tmp_path / "out", f"data.cache_dir={cli_cache}"))
        line = one_line_error(capfd.readouterr().err, status)
        monkeypatch.undo()
        assert str(archive) in line
        temps = list(cli_cache.rglob(".extract-*"))
        assert temps == []
        rows.append((f"container-ssl pretrain data.path=<{kind}>",
                     "exit 2: " + short(line.replace(str(archive), "$ARCHIVE"), 82), "none", str(len(temps))))
    record("drill 4c: untrusted data archive",
           table(("archive", "outcome", "outside the cache written/changed", ".extract-* left"), rows))
