"""Crash-safe checkpoint files.

Why: a pretraining run costs days; a crash or a kill during a save must never leave an unreadable
``checkpoint.pt``. Writes go to a temp file in the same folder, are fsynced, then renamed over the target
(rename is atomic on POSIX). Reads use ``weights_only=True`` so that a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

__all__ = ["load_checkpoint", "remove_stale_temps", "save_atomic", "strip_prefixes"]


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
    """Load a checkpoint with ``weights_only=True``; every failure becomes a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain containers, "
                        f"which could run code ({first[:160]}); only load checkpoints you trust, "
                        "re-saved as plain state_dicts") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as e:
        raise UserError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}); "
                        "use the previous checkpoint or re-save it") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...] = ("module.", "backbone.", "_orig_mod.")) -> dict:
    """Remove wrapper prefixes (DDP ``module.``, DINO ``backbone.``, torch.compile ``_orig_mod.``) repeatedly."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


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
