"""Released CONTAINER-LIGHT checkpoints -> this package's :class:`~container_ssl.models.container.Container`.

Why: the released ImageNet weights use the official module names (``patch_embed{i}``, ``blocks{i}.{j}.conv1``
...), which differ from the timm-style names here (``stem``, ``stages.{i}.blocks.{j}.mixer.qkv`` ...). The
rename is pure bookkeeping: shapes are identical, so a released file loads strictly. A wrong file (another
architecture, another size) must fail with one readable message listing what did not match, not with
PyTorch's multi-page ``load_state_dict`` error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple

from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import InvalidArgument
from ..run import compare_state, unwrap_state_dict

__all__ = ["LoadResult", "checkpoint_filter_fn", "load_released_container_light"]

_OFFICIAL_KEY = re.compile(r"^(patch_embed\d+|blocks\d+)\.")
_OFFICIAL_BLOCK = re.compile(r"^blocks(\d+)\.(\d+)\.(.+)$")
_OFFICIAL_EMBED = re.compile(r"^patch_embed(\d+)\.(.+)$")
# Official block sub-module -> ours, for the parts that do not depend on the block kind.
_BLOCK_RENAMES = {
    "attn": "mixer.static_conv",  # CBlock: the 5x5 depthwise static affinity
    "conv": "mixer.static_conv",  # MixBlock: the same conv, on the v slice
    "conv2": "mixer.proj",
    "sa_weight": "mixer.mix_logit",
}


class LoadResult(NamedTuple):
    """Keys that did not load (only non-empty with ``strict=False``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _rename_official(key: str, mix_blocks: set[str]) -> str:
    match = _OFFICIAL_EMBED.match(key)
    if match:
        stage, rest = int(match.group(1)), match.group(2)
        return f"stem.{rest}" if stage == 1 else f"stages.{stage - 1}.downsample.{rest}"
    match = _OFFICIAL_BLOCK.match(key)
    if not match:
        return key  # norm.*, head.*: same names
    stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
    module, _, leaf = rest.partition(".")
    if module == "conv1":
        module = "mixer.qkv" if f"blocks{match.group(1)}.{match.group(2)}." in mix_blocks else "mixer.v"
    else:
        module = _BLOCK_RENAMES.get(module, module)
    new_rest = f"{module}.{leaf}" if leaf else module
    return f"stages.{stage - 1}.blocks.{index}.{new_rest}"


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module | None = None) -> dict:
    """Map an official CONTAINER-LIGHT state_dict onto this package's names (timm ``pretrained_filter_fn``).

    Native dicts pass through unchanged (after :func:`container_ssl.run.unwrap_state_dict`: ``model``/
    ``state_dict`` entries and ``module.`` prefixes). A block is a MixBlock when it carries ``sa_weight``:
    its ``conv1`` is the ``qkv`` conv; in a CBlock ``conv1`` makes V only.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not any(_OFFICIAL_KEY.match(k) for k in state_dict):
        return state_dict
    mix_blocks = {k[: -len("sa_weight")] for k in state_dict if k.endswith(".sa_weight")}
    return {_rename_official(key, mix_blocks): value for key, value in state_dict.items()}


def load_released_container_light(
        model: nn.Module,
        path_or_state_dict: str | os.PathLike | Mapping,
        strict: bool = True,
) -> LoadResult:
    """Load a released (or native) CONTAINER-LIGHT checkpoint into ``model``.

    Every mismatch (missing keys, unexpected keys, shape mismatches) is reported at once in one line of
    :class:`~container_ssl.errors.InvalidArgument` (a ``ValueError``), so a checkpoint of another
    architecture is recognisable at a glance. Shape mismatches always fail; with ``strict=False``
    missing/unexpected keys are returned instead.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "state_dict", path_or_state_dict
    else:
        source, raw = str(path_or_state_dict), load_checkpoint(path_or_state_dict)
    state_dict = checkpoint_filter_fn(raw, model)
    own = model.state_dict()
    mismatch = compare_state(own, state_dict)
    if mismatch.shapes or (strict and mismatch):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise InvalidArgument(mismatch.message(source, arch, "use a checkpoint of this architecture and size"
                                         + ("" if mismatch.shapes else ", or strict=False to load only the "
                                                                       "matching keys")))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return LoadResult(mismatch.missing, mismatch.unexpected)
