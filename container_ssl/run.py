"""The run contract: what a pretraining run folder holds, and how its checkpoint is read back.

Why one module: pretraining writes a run folder and a checkpoint; resume, the evaluators, ``visualize``,
``export``, ``report`` and the released-weights loader read them. Written down once here (the file names,
the ``<run>/eval`` rule, the checkpoint's keys, how a state dict is unwrapped and checked against a
network), a change of the layout or of the schema is a change in one file that every reader follows.

Layout of a run folder ``<run>``::

    checkpoint.pt            latest state (config, student, teacher, optimizer, loss, epoch, rng, ...)
    checkpoint_XXXX.pt       periodic copies
    config.yaml              the resolved config
    summary.json             throughput, params, GMACs, how the run ended
    metrics.jsonl            one JSON line per logged step, epoch, monitor
    tb/                      TensorBoard events
    eval/                    where the evaluations of <run>/checkpoint.pt go by default:
                             knn.json, linear.json, finetune_<tag>.json (+ logs and heads)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import load_checkpoint_with_sha256
from .errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "CHECKPOINT", "CONFIG", "EVAL_DIR", "FINETUNE_PREFIX", "KNN_REPORT", "LINEAR_REPORT", "METRICS", "NETWORKS",
    "SUMMARY", "Mismatch", "RunCheckpoint", "compare_state", "eval_dir", "load_strict",
    "read_checkpoint", "strip_prefixes", "unwrap_state_dict",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVAL_DIR = "eval"
KNN_REPORT = "knn.json"
LINEAR_REPORT = "linear.json"
FINETUNE_PREFIX = "finetune_"  # finetune_<tag>.json, <tag> = label fraction or subset file name
NETWORKS = ("teacher", "student")  # the two MultiCropWrapper state dicts of a pretraining checkpoint

WRAPPER_KEYS = ("model", "state_dict", "model_ema")  # where released / timm files keep their state dict
PREFIXES = ("module.", "backbone.", "_orig_mod.")  # DDP, DINO's MultiCropWrapper, torch.compile
_SHOW = 4  # names shown per kind of mismatch


def eval_dir(checkpoint: str | os.PathLike) -> Path:
    """Where the evaluations of ``checkpoint`` go by default: ``eval/`` beside it (``report`` reads them there)."""
    return Path(checkpoint).resolve().parent / EVAL_DIR


# ------------------------------------------------------------------------------------ typed reader
@dataclass(frozen=True)
class RunCheckpoint:
    """A checkpoint file, read once: its pretraining config (typed) and the networks' state dicts.

    ``config`` is the :class:`~container_ssl.config.PretrainConfig` the run was trained with, or None for
    a file that pretraining did not write (a released or plain timm state dict), recognised by the
    absence of a ``config.model`` mapping.
    """

    path: Path
    sha256: str
    raw: dict
    config: DictConfig | None

    @property
    def epoch(self) -> int | None:
        epoch = self.raw.get("epoch")
        return epoch if isinstance(epoch, int) else None

    def network(self, key: str) -> dict[str, torch.Tensor]:
        """The ``teacher``/``student`` state dict of a pretraining checkpoint, checked to be one."""
        if key not in self.raw:
            have = [k for k in NETWORKS if isinstance(self.raw.get(k), Mapping)]
            raise UserError(f"checkpoint {self.path} has no '{key}' weights (it has: {', '.join(have) or 'none'}); "
                            "use --checkpoint-key teacher or student")
        entry = self.raw[key]
        if not isinstance(entry, Mapping):
            raise UserError(f"checkpoint {self.path}: '{key}' is a {type(entry).__name__}, not a state dict "
                            "(parameter name -> tensor); the file was not written by container-ssl pretrain")
        odd = [f"{k} ({type(v).__name__})" for k, v in entry.items()
               if not isinstance(k, str) or not torch.is_tensor(v)]
        if odd:
            raise UserError(f"checkpoint {self.path}: '{key}' is not a state dict: {len(odd)} entries are not tensors "
                            f"({_names(odd)}); the file was not written by container-ssl pretrain")
        return dict(entry)

    def backbone(self, key: str) -> dict[str, torch.Tensor]:
        """The backbone weights of one network (the DINO head is a pretraining device, never evaluated)."""
        state = strip_prefixes(self.network(key), ("module.", "_orig_mod."))
        backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise UserError(f"checkpoint {self.path}: '{key}' holds no 'backbone.' weights; is it a pretraining "
                            "checkpoint?")
        return strip_prefixes(backbone)


def read_checkpoint(path: str | os.PathLike) -> RunCheckpoint:
    """Read ``path`` once (``weights_only``, hashed) into a :class:`RunCheckpoint`."""
    path = Path(path)
    raw, sha256 = load_checkpoint_with_sha256(path)
    saved = raw.get("config")
    if not (isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping)):
        return RunCheckpoint(path=path, sha256=sha256, raw=raw, config=None)
    # imported here, not at the top: the released-weights loader (imported with the package) needs this
    # module but not OmegaConf
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import PretrainConfig

    try:  # keys the saved config lacks take the defaults
        config = OmegaConf.merge(OmegaConf.structured(PretrainConfig), dict(saved))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"checkpoint {path}: its config does not fit this version's schema at '{key}' "
                        f"({str(e).splitlines()[0]}); use the container-ssl version that wrote it") from None
    return RunCheckpoint(path=path, sha256=sha256, raw=raw, config=config)


# ------------------------------------------------------------------------- state dicts and loading
def strip_prefixes(state_dict: Mapping, prefixes: tuple[str, ...] = PREFIXES) -> dict:
    """Remove wrapper prefixes (DDP ``module.``, DINO ``backbone.``, torch.compile ``_orig_mod.``) repeatedly."""
    out = {}
    for key, value in state_dict.items():
        while prefix := next((p for p in prefixes if key.startswith(p)), None):
            key = key[len(prefix):]
        out[key] = value
    return out


def unwrap_state_dict(obj: Mapping, first: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a state dict kept under wrapper entries (``first``, then ``model``/``state_dict``/
    ``model_ema``, a few levels deep), with the wrapper prefixes removed from their names."""
    state: Mapping = obj
    keys = (first, *WRAPPER_KEYS) if first else WRAPPER_KEYS
    for _ in range(4):
        inner = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    return strip_prefixes({k: v for k, v in state.items() if torch.is_tensor(v)})


@dataclass(frozen=True)
class Mismatch:
    """How a state dict differs from a network's: missing and unexpected names, and shape differences."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def message(self, source: Any, target: str, hint: str) -> str:
        """One line: ``checkpoint SOURCE does not fit TARGET: N missing keys (...); ...; HINT``."""
        parts = [f"{len(self.missing)} missing keys" + (f" ({_names(self.missing)})" if self.missing else ""),
                 f"{len(self.unexpected)} unexpected keys" + (f" ({_names(self.unexpected)})" if self.unexpected
                                                              else "")]
        if self.shapes:
            parts.append(f"{len(self.shapes)} shape mismatches ({_names(self.shapes)})")
        return f"checkpoint {source} does not fit {target}: " + "; ".join(parts) + f"; {hint}"


def compare_state(own: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> Mismatch:
    """Compare ``state`` with a network's ``own`` state dict (a non-tensor entry counts as unexpected)."""
    return Mismatch(
        missing=[k for k in own if k not in state],
        unexpected=[k for k, v in state.items() if k not in own or not torch.is_tensor(v)],
        shapes=[f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                if k in own and torch.is_tensor(v) and v.shape != own[k].shape])


def load_strict(module: nn.Module, state: Mapping[str, Any], source: Any, target: str, hint: str) -> None:
    """Load ``state`` into ``module`` only if every name and shape fits; else one :class:`UserError` line.

    Why checked before loading: ``load_state_dict`` raises a multi-page RuntimeError, and a partial load
    would silently evaluate (or resume) random weights.
    """
    mismatch = compare_state(module.state_dict(), state)
    if mismatch:
        raise UserError(mismatch.message(source, target, hint))
    module.load_state_dict(state, strict=True)  # as given: a saved state dict keeps its _metadata


def _names(keys: list) -> str:
    return ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")
