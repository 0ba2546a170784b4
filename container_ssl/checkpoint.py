"""Crash-safe checkpoint files.

Why: a pretraining run costs days; a crash or a kill during a save must never leave an unreadable
``checkpoint.pt``. Writes go to a temp file in the same folder, are fsynced, then renamed over the target
(rename is atomic on POSIX). Reads use ``weights_only=True`` so that a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
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
    removed = [tmp for tmp in Path(folder).glob(f".{name}.*.tmp") if tmp.is_file()]
    for tmp in removed:
        _remove_quietly(str(tmp))
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; every failure becomes a one-line :class:`UserError`.

    Why three messages: "could run code" sends a user hunting for a malicious file, so it is kept for a
    real torch checkpoint whose pickle names objects outside the allowed set. A file that is not a torch
    checkpoint at all (random bytes, text, an image), or one cut short by a crash or a copy, is told so.
    """
    return _load(path, map_location, whole=False)[0]


def load_checkpoint_with_sha256(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                                ) -> tuple[dict, str]:
    """:func:`load_checkpoint` and the file's hex sha256, from one read of the file.

    Why one read: an evaluation identifies the weights it reports (and its feature cache) by this hash;
    hashing the bytes that are unpickled, rather than reopening the file, reads a large checkpoint once
    and hashes exactly what was loaded.
    """
    obj, data = _load(path, map_location, whole=True)
    return obj, hashlib.sha256(data).hexdigest()


def _load(path: str | os.PathLike, map_location: str | torch.device, whole: bool) -> tuple[dict, bytes]:
    """Unpickle ``path`` (from the bytes read when ``whole``, else from the file); returns the bytes read.

    Only a torch.save zip archive (since torch 1.6) or a legacy torch pickle (protocol >= 2) is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); use the previous checkpoint or re-save it")
    try:
        with open(path, "rb") as f:
            data = f.read() if whole else f.read(4)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if data.startswith(b"PK\x03\x04"):
        kind = "zip archive"
    elif data.startswith(b"\x80"):
        kind = "legacy pickle"
    else:
        raise UserError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch "
                        "pickle); pass the .pt/.pth file that torch.save wrote")
    try:
        obj = torch.load(io.BytesIO(data) if whole else path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError,
            KeyError, UnicodeDecodeError, AttributeError, TypeError) as e:
        unsafe = _disallowed_global(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe is not None:
            raise UserError(f"refused to load {path}: it holds objects other than tensors and plain containers, "
                            f"which could run code ({unsafe}); only load checkpoints you trust, re-saved as plain "
                            "state_dicts") from None
        raise UserError(f"checkpoint {path} is unreadable or truncated (a damaged torch.save {kind}: "
                        f"{type(e).__name__}); use the previous checkpoint or re-save it") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj, data


def _disallowed_global(message: str) -> str | None:
    """Where the weights-only unpickler stopped at a class/function reference (what could run code), if it did."""
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL " in line:
            return line.strip().split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")[:160]
    return None


def _remove_quietly(path: str) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
