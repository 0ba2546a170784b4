"""Drill 5: a read-only output dir fails at start; a full disk fails at save time with the old checkpoint intact.

Why real failures where possible: the tests run as root, and root ignores permission bits, so a read-only
dir is a path under a regular file, a path in sysfs, and (when this machine lets the test mount) a
read-only tmpfs. A full disk is simulated by making ``torch.save``/``os.fsync``/``os.replace`` raise
ENOSPC, and is real on a tiny tmpfs where mounting is allowed.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from container_ssl.cli import main as cli_main
from container_ssl.ssl.trainer import pretrain
from tests.tiny import tiny_cfg

from .figures import record, table
from .helpers import one_line_error, sha256, short, temp_files, tiny_args

EXTRA = ["data.subset=32", "optim.epochs=2", "checkpoint_every_steps=1"]  # 2 iterations per epoch


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path`` if this machine allows it; yields whether it is mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30, check=False)
        mounted = done.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def _cli(argv: list[str], capfd) -> str:
    capfd.readouterr()
    status = cli_main(argv)
    return one_line_error(capfd.readouterr().err, status)


def _first_checkpoint(data: Path, out: Path) -> str:
    """Train one step into ``out``; return the sha256 of its checkpoint.pt."""
    pretrain(tiny_cfg(data, out, *EXTRA, "max_steps=1"))
    assert (out / "checkpoint.pt").is_file()
    return sha256(out / "checkpoint.pt")


@pytest.mark.reliability
def test_read_only_output_dir_fails_at_start(cifar10_small, tmp_path, capfd):
    rows = []
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    cases = [("parent is a regular file", a_file / "run")]
    if Path("/sys/kernel").is_dir():  # sysfs is mounted: no one, root included, can make folders there
        cases.append(("sysfs (root cannot write)", Path("/sys/container-ssl-drill/run")))
    for kind, out in cases:
        line = _cli(tiny_args(cifar10_small, out, *EXTRA), capfd)
        assert f"output_dir {out} is not writable" in line and "choose another output_dir" in line, line
        rows.append((kind, short(line.replace(str(tmp_path), "$TMP"), 130)))
    with tmpfs(tmp_path / "mnt", "16m") as mounted:
        if mounted:
            out = tmp_path / "mnt" / "run"
            before = _first_checkpoint(cifar10_small, out)
            subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "mnt")], check=True, timeout=30)
            line = _cli(tiny_args(cifar10_small, out, *EXTRA), capfd)
            assert "Read-only file system" in line and "choose another output_dir" in line, line
            assert sha256(out / "checkpoint.pt") == before
            rows.append(("read-only tmpfs mount (resume)", short(line.replace(str(tmp_path), "$TMP"), 130)))
        else:
            rows.append(("read-only tmpfs mount (resume)", "n/a: mounting is not permitted here"))
    record("drill 5a: read-only output dir", table(("output dir", "outcome at start"), rows))


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _partial_torch_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04" + b"\0" * 4096)  # half a zip file, then the disk is full
    _enospc()


@pytest.mark.reliability
def test_disk_full_at_save_keeps_previous_checkpoint(cifar10_small, tmp_path, capfd, monkeypatch):
    rows = []
    out = tmp_path / "run"
    before = _first_checkpoint(cifar10_small, out)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("checkpoint.pt"):
            _enospc()
        return real_replace(src, dst, *args, **kwargs)

    faults = {"torch.save writes half, then ENOSPC": (torch, "save", _partial_torch_save),
              "os.fsync ENOSPC": (os, "fsync", _enospc), "os.replace ENOSPC": (os, "replace", replace)}
    for kind, (owner, name, fake) in faults.items():
        with monkeypatch.context() as m:
            m.setattr(owner, name, fake)
            line = _cli(tiny_args(cifar10_small, out, *EXTRA), capfd)
        for text in (f"could not write checkpoint {out / 'checkpoint.pt'}", "No space left on device",
                     "free disk space", "previous checkpoint is intact"):
            assert text in line, f"{text!r} not in {line!r}"
        intact = sha256(out / "checkpoint.pt") == before
        assert intact and not temp_files(out), f"{kind}: checkpoint changed or temp files left: {temp_files(out)}"
        rows.append((f"simulated: {kind}", "identical", "none", short(line.replace(str(tmp_path), "$TMP"), 120)))

    # the folder becomes unwritable after the start-up check (permissions changed, a mount went read-only):
    # the temp file cannot even be created. Root ignores permission bits, so mkstemp's failure is simulated.
    def eacces(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", eacces)
        line = _cli(tiny_args(cifar10_small, out, *EXTRA), capfd)
    for text in (f"could not write checkpoint {out / 'checkpoint.pt'}", "Permission denied", "previous checkpoint is intact"):
        assert text in line, f"{text!r} not in {line!r}"
    assert sha256(out / "checkpoint.pt") == before and not temp_files(out)
    rows.append(("simulated: folder unwritable mid-run (mkstemp EACCES)", "identical", "none",
                 short(line.replace(str(tmp_path), "$TMP"), 120)))

    with tmpfs(tmp_path / "small", "8m") as mounted:  # one checkpoint (~5.4 MB) fits, a second does not
        if mounted:
            out = tmp_path / "small" / "run"
            before = _first_checkpoint(cifar10_small, out)
            line = _cli(tiny_args(cifar10_small, out, *EXTRA), capfd)
            assert "No space left on device" in line and "previous checkpoint is intact" in line, line
            intact = sha256(out / "checkpoint.pt") == before
            assert intact and not temp_files(out), "real ENOSPC: checkpoint changed or temp files left"
            rows.append(("real: 8 MB tmpfs", "identical", "none", short(line.replace(str(tmp_path), "$TMP"), 120)))
        else:
            rows.append(("real: 8 MB tmpfs", "n/a", "n/a", "mounting is not permitted here"))
    record("drill 5b: disk full at save time",
           table(("fault", "previous checkpoint", "temp files left", "outcome"), rows))
