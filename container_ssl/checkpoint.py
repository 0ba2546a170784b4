"""Crash-safe checkpoint files.

Why: a pretraining run costs days; a crash or a kill during a save must never leave an unreadable
``checkpoint.pt``. Writes go to a temp file in the same folder, are fsynced, then renamed over the target
(rename is atomic on POSIX). Reads use ``weights_only=True`` so that a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

__all__ = ["load_checkpoint", "load_checkpoint_with_sha256", "remove_stale_temps", "save_atomic"]


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with ``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = ""
    try:
        # inside the try: a folder that became unwritable (or full) mid-run fails here, before any byte is written
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; "
                        "free disk space or choose another output dir (the previous checkpoint is intact)") from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: str | os.PathLike, name: str = "*.pt") -> list[Path]:
    """Delete the temp files that saves killed mid-write left in ``folder`` (``.<name>.*.tmp``).

    Why: a kill during :func:`save_atomic` leaves its temp file (as large as a checkpoint) behind; a run
    owns its output folder, so the next start of that run removes them before writing its own.
    """
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if tmp.is_file():
            _remove_quietly(str(tmp))
            removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; every failure becomes a one-line :class:`UserError`.

    Why three messages: "could run code" sends a user hunting for a malicious file, so it is kept for a
    real torch checkpoint whose pickle names objects outside the allowed set. A file that is not a torch
    checkpoint at all (random bytes, text, an image), or one cut short by a crash or a copy, is told so.
    """
    path = _existing(path)
    kind = _container_kind(path)
    return _unpickle(path, kind, path, map_location)


def load_checkpoint_with_sha256(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                                ) -> tuple[dict, str]:
    """:func:`load_checkpoint` and the file's hex sha256, from one read of the file.

    Why one read: an evaluation identifies the weights it reports (and its feature cache) by this hash;
    hashing the bytes that are unpickled, rather than reopening the file, reads a large checkpoint once
    and hashes exactly what was loaded.
    """
    path = _existing(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    kind = _kind_of(data[:4])
    if kind is None:
        raise UserError(_not_torch(path))
    return _unpickle(path, kind, io.BytesIO(data), map_location), hashlib.sha256(data).hexdigest()


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); use the previous checkpoint or re-save it")
    return path


def _unpickle(path: Path, kind: str, source: Any, map_location: str | torch.device) -> dict:
    try:
        obj = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if _names_disallowed_global(str(e)):
            raise UserError(f"refused to load {path}: it holds objects other than tensors and plain containers, "
                            f"which could run code ({_disallowed_detail(str(e))}); only load checkpoints you "
                            "trust, re-saved as plain state_dicts") from None
        raise UserError(_damaged(path, kind, e)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError,
            UnicodeDecodeError, AttributeError, TypeError) as e:
        raise UserError(_damaged(path, kind, e)) from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2, as the legacy torch.save format starts


def _container_kind(path: Path) -> str:
    """``zip`` (torch.save's format since 1.6) or ``legacy`` (a pickle stream); anything else is refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    kind = _kind_of(head)
    if kind is None:
        raise UserError(_not_torch(path))
    return kind


def _kind_of(head: bytes) -> str | None:
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head[:1] and head[0] == _PICKLE_PROTO:
        return "legacy"
    return None


def _not_torch(path: Path) -> str:
    return (f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch pickle); "
            "pass the .pt/.pth file that torch.save wrote")


def _names_disallowed_global(message: str) -> bool:
    """True when the weights-only unpickler stopped at a class/function reference (what could run code)."""
    return "Unsupported global" in message or "GLOBAL " in message


def _disallowed_detail(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL " in line:
            return line.strip().split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")[:160]
    return "disallowed global"


def _damaged(path: Path, kind: str, error: BaseException) -> str:
    what = "zip archive" if kind == "zip" else "legacy pickle"
    return (f"checkpoint {path} is unreadable or truncated (a damaged torch.save {what}: {type(error).__name__}); "
            "use the previous checkpoint or re-save it")


def _remove_quietly(path: str) -> None:
    if not path:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
