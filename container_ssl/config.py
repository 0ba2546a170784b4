"""Structured pretraining configuration (OmegaConf).

Why: a typo in a key or a wrong type must fail before any compute is spent, with the valid keys listed.
The dataclasses below are the schema; YAML files in ``configs/`` and ``key=value`` overrides are merged
onto it, and OmegaConf rejects unknown keys and values of the wrong type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "container_light_small"          # any name from `container-ssl models`, or deit_tiny/deit_small
    img_size: int = 224                           # nominal size (DeiT position-embedding grid)
    patch_size: Optional[int] = None              # DeiT patch size / Container stem stride; None = model default
    drop_path_rate: float = 0.1
    out_dim: int = 65536                          # DINO head output dimension (prototypes)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    use_bn_in_head: bool = False
    norm_last_layer: bool = True


@dataclass
class AugConfig:
    backend: str = "cpu"                          # cpu (torchvision v2 in workers) | gpu (kornia, batched on device)
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: list = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list = field(default_factory=lambda: [0.05, 0.4])
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])   # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])
    blur_p: list = field(default_factory=lambda: [1.0, 0.1, 0.5])         # global 1, global 2, locals
    solarize_p: float = 0.2                                              # global 2 only
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    base_size: int = 0                            # gpu backend: loader resizes images to this square first (0 = global_size)


@dataclass
class DataConfig:
    path: str = "cifar10"                         # ImageFolder root (train/, val/), a .tar/.tar.gz of one, or cifar10
    train_split: str = "train"
    val_split: str = "val"
    cache_dir: str = ""                           # where archives are extracted / cifar10 downloaded ("" = ~/.cache)
    num_workers: int = 2
    on_bad_image: str = "skip"                    # skip (counted, logged) | error
    subset: int = 0                               # use only the first N images per split after a seeded shuffle (0 = all)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"                      # adamw | sgd
    batch_size_per_gpu: int = 64
    epochs: int = 100
    base_lr: float = 0.0005                       # peak lr = base_lr * global_batch / 256
    min_lr: float = 1.0e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0                        # 0 disables
    freeze_last_layer: int = 1                    # epochs with the head's last layer frozen
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    amp: str = "auto"                             # auto (bf16 on GPU) | bf16 | fp16 | none


@dataclass
class LossConfig:
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9


@dataclass
class MonitorConfig:
    knn_every: int = 0                            # epochs between online kNN checks (0 = off)
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_images: int = 0                     # cap on the labelled bank (0 = whole train split)
    knn_val_images: int = 0                       # cap on the queries (0 = whole val split)
    log_every: int = 10                           # iterations between console/metric lines
    log_images: bool = True                       # a few crops to TensorBoard at the first step
    rank_every: int = 1                           # epochs between RankMe / embedding-std checks (0 = off)
    rank_images: int = 512                        # the fixed train batch they are computed on
    collapse_std: float = 0.1                     # warn when the normalised embedding std (1 = isotropic) is below


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"                          # auto | cpu | cuda
    checkpoint_every_epochs: int = 10             # periodic checkpoint_XXXX.pt
    checkpoint_every_steps: int = 0               # also refresh checkpoint.pt every N iterations (0 = per epoch only)
    on_nan: str = "stop"                          # stop | skip-step
    max_steps: int = 0                            # stop after this many iterations (0 = run all epochs)
    channels_last: bool = False
    compile: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None,
                schema: type = PretrainConfig) -> DictConfig:
    """Merge a YAML file and ``key=value`` overrides onto the schema; bad keys/types raise UserError."""
    cfg = OmegaConf.structured(schema)
    where = "defaults"
    try:
        if path is not None:
            where = str(path)
            cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))
        if overrides:
            where = "command-line overrides"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ValidationError, OmegaConfBaseException) as e:
        raise UserError(_explain(e, where, schema)) from None
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (saved next to every run)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain-python copy (safe to store inside a ``weights_only`` checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)


# Keys that may differ when a run is resumed: where files live, how fast they load, what is monitored and
# when it is saved. Everything else shapes the training trajectory, so changing it breaks exact resume.
RESUME_FREE_KEYS = ("output_dir", "device", "compile", "max_steps", "on_nan", "checkpoint_every_epochs",
                    "checkpoint_every_steps", "data.path", "data.cache_dir", "data.num_workers",
                    "data.on_bad_image", "monitor.")


def changed_keys(saved: dict[str, Any], current: dict[str, Any],
                 free: tuple[str, ...] = RESUME_FREE_KEYS) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) where two plain config dicts differ, ``free`` keys/prefixes aside."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    def is_free(key: str) -> bool:
        return any(key == f or (f.endswith(".") and key.startswith(f)) for f in free)

    a, b = flat(saved), flat(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not is_free(k)]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def _explain(e: OmegaConfBaseException, where: str, schema: type) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) and key:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = _keys_at(schema, parent)
        return f"unknown config key '{key}' in {where}; valid keys{' under ' + parent if parent else ''}: {', '.join(valid)}"
    if key:
        return f"bad value for config key '{key}' in {where}: {msg}"
    return f"bad config in {where}: {msg}"


def _keys_at(schema: type, dotted: str) -> list[str]:
    node = OmegaConf.structured(schema)
    for part in filter(None, dotted.split(".")):
        node = node.get(part)
        if not isinstance(node, DictConfig):
            return []
    return sorted(node.keys())
