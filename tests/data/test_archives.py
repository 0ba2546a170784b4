"""Untrusted data archives: nothing is written or changed outside the cache, limits hold, no temp folder stays.

The hostile archives are built member by member (tests/data/archive_builders.py), in the shapes of real
attacks: CVE-2025-4517 (nested long-named folders + a symlink chain longer than PATH_MAX + a hardlink out + a
member that writes through it), ``../`` and absolute names, symlinks and hardlinks out, devices and FIFOs.
Each test snapshots every file and folder of the test's sandbox outside the cache (path, type, bytes, mtime)
and compares it after the extraction. A benign archive is compared with the standard library's own
extraction of it.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from container_ssl.data import archives
from container_ssl.data.archives import extract_archive
from container_ssl.data.untar import MAX_BYTES_ENV, MAX_MEMBERS_ENV, Limits
from container_ssl.errors import UserError
from tests.data.archive_builders import (
    UP,
    add,
    completion,
    cve_2025_4517,
    make_tar,
    snapshot,
)


# --------------------------------------------------------------------------------------------- helpers
def tree(root: Path) -> dict[str, object]:
    """Relative path -> bytes (regular files) or 'dir'; anything else is listed by its type."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = p.read_bytes()
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = f"type {stat.S_IFMT(st.st_mode):o}"
    out.pop(".complete", None)
    return out


def temp_folders(cache: Path) -> list[Path]:
    return sorted((cache / "extracted").glob(".extract-*")) if (cache / "extracted").is_dir() else []


@pytest.fixture
def sandbox(tmp_path):
    """(sandbox, cache): the cache sits in a sandbox that also holds the file the attacks aim at.

    On teardown: nothing in the sandbox outside the cache (and the test's archives) was written or
    changed, and no ``.extract-*`` temp folder remains.
    """
    victim = tmp_path / "victim.txt"
    victim.write_text("original\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "archives").mkdir()
    cache = tmp_path / "cache"
    before = snapshot(tmp_path, cache, tmp_path / "archives")
    yield tmp_path, cache
    assert snapshot(tmp_path, cache, tmp_path / "archives") == before, \
        "the extraction wrote or changed something outside the cache"
    assert victim.read_text() == "original\n"
    assert temp_folders(cache) == [], "a .extract-* temp folder was left behind"


def archive_path(sandbox: Path, name: str) -> Path:
    return sandbox / "archives" / name


def only_folders_and_files(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            mode = os.lstat(Path(folder) / name).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), f"{Path(folder) / name} is neither folder nor file"


# ----------------------------------------------------------------------------------------- hostile
def test_cve_2025_4517_shape_writes_and_changes_nothing_outside(sandbox, caplog):
    root, cache = sandbox
    archive = make_tar(archive_path(root, "cve.tar"), cve_2025_4517)
    with caplog.at_level(logging.WARNING):
        target = extract_archive(archive, cache)
    only_folders_and_files(target)
    done = completion(target)
    assert done["skipped"] == {"symlink": 18, "hardlink": 1} and done["files"] == 2
    assert (target / "escape" / "outside" / "pwned.txt").read_bytes() == b"written outside\n"  # inside, harmless
    assert (target / "flaglink").read_bytes() == b"overwritten\n"
    assert "skipped 19 member(s)" in caplog.text and "1 hardlink, 18 symlinks" in caplog.text


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dotdot-in-the-middle"])
def test_names_outside_the_folder_refuse_the_archive(sandbox, kind):
    root, cache = sandbox
    name = {"dotdot": "../" * UP + "outside/evil.txt", "absolute": str(root / "outside" / "evil.txt"),
            "dotdot-in-the-middle": "train/" + "../" * (UP + 1) + "outside/evil.txt"}[kind]

    def build(tar):
        add(tar, "train/a/ok.jpg", data=b"fine")
        add(tar, name, data=b"evil")

    archive = make_tar(archive_path(root, f"{kind}.tar"), build)
    with pytest.raises(UserError, match=r"member '.*evil.txt' points outside the extraction folder") as e:
        extract_archive(archive, cache)
    assert str(archive) in str(e.value) and "\n" not in str(e.value)
    assert not list((cache / "extracted").iterdir()), "a refused archive left an extraction"


def test_links_devices_and_fifos_are_skipped_and_counted(sandbox, caplog):
    root, cache = sandbox
    victim = root / "victim.txt"

    def build(tar):
        add(tar, "train/a/ok.jpg", data=b"image")
        add(tar, "etc", tarfile.SYMTYPE, link="/etc")  # a symlink to /etc (nothing is written through it)
        add(tar, "out", tarfile.SYMTYPE, link=str(root / "outside"))
        add(tar, "out/new.txt", data=b"through a symlink")  # must land in a real folder 'out' inside
        add(tar, "hard", tarfile.LNKTYPE, link=str(victim))  # a hardlink to an outside file ...
        add(tar, "hard", data=b"overwritten\n")  # ... and a member that would write through it
        add(tar, "rel-hard", tarfile.LNKTYPE, link="../" * UP + "victim.txt")
        add(tar, "null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add(tar, "loop0", tarfile.BLKTYPE, devmajor=7, devminor=0)
        add(tar, "fifo", tarfile.FIFOTYPE)

    archive = make_tar(archive_path(root, "links.tar"), build)
    with caplog.at_level(logging.WARNING):
        target = extract_archive(archive, cache)
    only_folders_and_files(target)
    assert completion(target)["skipped"] == {"symlink": 2, "hardlink": 2, "character device": 1,
                                             "block device": 1, "FIFO": 1}
    assert tree(target) == {"train": "dir", "train/a": "dir", "train/a/ok.jpg": b"image", "out": "dir",
                            "out/new.txt": b"through a symlink", "hard": b"overwritten\n"}
    assert "skipped 7 member(s)" in caplog.text and str(archive) in caplog.text


def test_a_dangling_hardlink_is_a_counted_skip(sandbox, caplog):
    root, cache = sandbox

    def build(tar):
        add(tar, "train/a/ok.jpg", data=b"image")
        add(tar, "train/a/copy.jpg", tarfile.LNKTYPE, link="train/a/missing.jpg")

    with caplog.at_level(logging.WARNING):
        target = extract_archive(make_tar(archive_path(root, "dangling.tar"), build), cache)
    assert tree(target) == {"train": "dir", "train/a": "dir", "train/a/ok.jpg": b"image"}
    assert completion(target)["skipped"] == {"hardlink": 1} and "copy.jpg" in caplog.text


@pytest.mark.parametrize("first, second, match", [
    ("file", "dir", r"'train/x' is both a file and a folder"),
    ("dir", "file", r"'train/x' is both a folder and a file"),
])
def test_a_name_that_is_file_and_folder_is_one_line(sandbox, first, second, match):
    root, cache = sandbox

    def build(tar):
        for kind in (first, second):
            if kind == "file":
                add(tar, "train/x", data=b"1")
            else:
                add(tar, "train/x/y.jpg", data=b"2")

    with pytest.raises(UserError, match=match):
        extract_archive(make_tar(archive_path(root, f"{first}-{second}.tar"), build), cache)


# ------------------------------------------------------------------------------------------- limits
def _three_files(tar):
    for i in range(3):
        add(tar, f"train/a/{i}.jpg", data=bytes([i]) * 600)


@pytest.mark.parametrize("env, value, match", [
    (MAX_BYTES_ENV, "1500", rf"expands to more than 1,500 bytes \(the limit\); .* {MAX_BYTES_ENV}=6000"),
    (MAX_MEMBERS_ENV, "2", rf"expands to more than 2 members \(the limit\); .* {MAX_MEMBERS_ENV}=8"),
])
def test_limits_fire_before_writing_and_name_the_variable(sandbox, monkeypatch, env, value, match):
    root, cache = sandbox
    archive = make_tar(archive_path(root, "three.tar"), _three_files)
    monkeypatch.setenv(env, value)
    with pytest.raises(UserError, match=match) as e:
        extract_archive(archive, cache)
    assert str(archive) in str(e.value)
    assert not list((cache / "extracted").iterdir())
    monkeypatch.setenv(env, str(int(value) + 400))  # 1900 bytes / 402 members: fits
    assert len(list(extract_archive(archive, cache).rglob("*.jpg"))) == 3


def test_a_small_gzip_cannot_expand_past_the_byte_limit(sandbox, monkeypatch):
    root, cache = sandbox
    archive = make_tar(archive_path(root, "bomb.tar.gz"), lambda tar: add(tar, "zeros.jpg", data=bytes(8 << 20)),
                       mode="w:gz")
    assert archive.stat().st_size < 64 << 10  # 8 MiB of zeros in a few KiB
    monkeypatch.setenv(MAX_BYTES_ENV, str(1 << 20))
    with pytest.raises(UserError, match=r"more than 1,048,576 bytes"):
        extract_archive(archive, cache)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e400"])
def test_a_bad_limit_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(MAX_MEMBERS_ENV, value)
    with pytest.raises(UserError, match=rf"\${MAX_MEMBERS_ENV}={value}: expected a positive whole number"):
        Limits.from_env()


def test_default_limits_fit_imagenet_21k():
    limits = Limits.from_env({})
    assert limits.max_bytes >= 1.31e12 * 1.5 and limits.max_members >= 14_197_122 * 1.4
    assert Limits.from_env({MAX_BYTES_ENV: "4e12", MAX_MEMBERS_ENV: "40_000_000"}) == Limits(4 * 10**12, 40_000_000)


# ------------------------------------------------------------------------------ failures clean up
@pytest.mark.parametrize("content", ["noise", "text"])  # gzip stores noise as is (CRC), deflates text
def test_no_temp_folder_stays_after_a_truncated_or_corrupt_archive(sandbox, content):
    root, cache = sandbox
    rng = random.Random(0)
    data = bytes(rng.randrange(256) for _ in range(40000)) if content == "noise" else \
        " ".join(str(rng.randrange(1000)) for _ in range(10000)).encode()

    def build(tar):
        for i in range(4):
            add(tar, f"train/a/{i}.jpg", data=data[i:])

    good = make_tar(archive_path(root, "good.tar.gz"), build, mode="w:gz").read_bytes()
    half = len(good) // 2
    for name, blob in [("truncated.tar.gz", good[:half]),
                       ("garbled.tar.gz", good[:half] + bytes(300) + good[half + 300:])]:
        path = archive_path(root, name)
        path.write_bytes(blob)
        with pytest.raises(UserError, match=rf"could not extract data archive {path}: .*re-download it") as e:
            extract_archive(path, cache)
        assert "\n" not in str(e.value)
    assert not list((cache / "extracted").iterdir())


@pytest.mark.parametrize("moment", ["before the first file", "after the first file"])
def test_no_temp_folder_stays_after_ctrl_c(sandbox, monkeypatch, moment):
    root, cache = sandbox
    archive = make_tar(archive_path(root, "three.tar"), _three_files)
    real = tarfile.TarFile.next

    def interrupted(self):
        """Ctrl-C at the next tar header read once the extraction has reached ``moment``."""
        temps = list((cache / "extracted").glob(".extract-*")) if (cache / "extracted").is_dir() else []
        written = [p for t in temps for p in t.rglob("*.jpg")]
        if temps and (written or moment == "before the first file"):
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(tarfile.TarFile, "next", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, cache)
    assert not list((cache / "extracted").iterdir())


def test_a_temp_folder_of_a_killed_extraction_is_removed(tmp_path):
    archive = make_tar(tmp_path / "three.tar", _three_files)
    extracted = tmp_path / "cache" / "extracted"
    extracted.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    host = archives._temp_prefix().split("@", 1)[1]
    killed = extracted / f".extract-{dead}@{host}abc123"
    running = extracted / f".extract-{os.getpid()}@{host}def456"  # this process: still alive
    other_host = extracted / f".extract-{dead}@elsewhere.example-ghi789"  # a shared cache: not ours to judge
    for folder in (killed, running, other_host):
        (folder / "train").mkdir(parents=True)
    extract_archive(archive, tmp_path / "cache")
    assert not killed.exists() and running.exists() and other_host.exists()


# --------------------------------------------------------------------------------------------- benign
def _benign(tar: tarfile.TarFile) -> None:
    rng = random.Random(1)
    add(tar, "./", tarfile.DIRTYPE)
    add(tar, "./cifar/", tarfile.DIRTYPE)
    for split in ("train", "val"):
        for cls in ("cat", "dög", "two words"):
            add(tar, f"./cifar/{split}/{cls}", tarfile.DIRTYPE)
            for i in range(3):
                size = rng.choice([0, 1, 511, 512, 513, 70000])
                add(tar, f"./cifar/{split}/{cls}/{i}.jpg", data=bytes(rng.randrange(256) for _ in range(size)))
    add(tar, "cifar/train/late/x.jpg", data=b"folder made on the way")  # no folder member before it
    add(tar, "cifar/README", data=b"first copy")
    add(tar, "cifar/README", data=b"second copy wins")  # appended again (tar -r): the later one counts
    add(tar, "x" * 120 + "/" + "y" * 150 + ".jpg", data=b"long names go through pax headers")


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_a_normal_archive_extracts_as_the_standard_library_does(tmp_path, mode, suffix):
    archive = make_tar(tmp_path / f"benign{suffix}", _benign, mode=mode)
    reference = tmp_path / "reference"
    reference.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(reference, filter="data")
    target = extract_archive(archive, tmp_path / "cache")
    expected = tree(reference)
    assert tree(target) == expected
    assert expected["cifar/README"] == b"second copy wins" and sum(isinstance(v, bytes) for v in expected.values()) == 21
    done = completion(target)
    assert done["skipped"] == {} and done["files"] == 2 * 3 * 3 + 4
    assert done["bytes"] == sum(len(v) for v in expected.values() if isinstance(v, bytes)) + len(b"first copy")
    assert temp_folders(tmp_path / "cache") == []
