"""Structured pretraining configuration (OmegaConf).

Why: a typo in a key or a wrong type must fail before any compute is spent, with the valid keys listed.
The dataclasses below are the schema; YAML files in ``configs/`` and ``key=value`` overrides are merged
onto it, and OmegaConf rejects unknown keys, values of the wrong type and strings outside a field's
:class:`Choice`; the range checks below run right after.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .errors import UserError


# ------------------------------------------------------------------------------------------- checks
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(_num(x) for x in v)


def rule(ok: Callable[[Any], bool], says: str) -> dict[str, tuple[Callable[[Any], bool], str]]:
    """Field metadata for a bound that :func:`validate` applies: ``x: int = field(default=1, metadata=rule(...))``.

    ``says`` is what a valid value is (``"must be > 0"``). Why at load time: a batch size of 0, a negative
    learning rate or a probability of 2 would otherwise surface as a traceback minutes into a run, or not at
    all (a run that silently learns nothing).
    """
    return {"check": (ok, says)}


POSITIVE = rule(lambda v: _num(v) and v > 0, "must be > 0")
NON_NEGATIVE = rule(lambda v: _num(v) and v >= 0, "must be >= 0")
PROBABILITY = rule(lambda v: _num(v) and 0 <= v <= 1, "is a probability and must lie in [0, 1]")
UNIT = rule(lambda v: _num(v) and 0 <= v <= 1, "must lie in [0, 1]")
SCALE_PAIR = rule(lambda v: _numbers(v, 2) and 0 < v[0] <= v[1] <= 1, "must be [min, max] with 0 < min <= max <= 1")


# ------------------------------------------------------------------------------------------ choices
class Choice(str, Enum):
    """A config value from a fixed set of strings; a field typed with a subclass accepts only its members.

    Why an Enum: OmegaConf then refuses any other string at load time, naming the key, so no code downstream
    re-checks it. Why a ``str`` mixin: code compares with the plain string (``cfg.aug.backend == "gpu"``)
    and messages print it. OmegaConf reads and writes a member by its *name*, so every name equals its
    value: YAML files, ``key=value`` overrides and the config.yaml of older runs read unchanged.
    """

    def __str__(self) -> str:
        return str(self.value)  # Enum's format() and f-strings use it too


class AugBackend(Choice):
    cpu = "cpu"  # torchvision v2, per image in the DataLoader workers
    gpu = "gpu"  # kornia, batched on the training device (which may be the CPU)


class Interpolation(Choice):
    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


class BadImagePolicy(Choice):
    skip = "skip"    # counted and logged
    error = "error"  # stop with a line naming the file


class OptimizerName(Choice):
    adamw = "adamw"
    sgd = "sgd"


class AmpMode(Choice):
    auto = "auto"  # bf16 on a GPU, none on the CPU
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


class Device(Choice):
    auto = "auto"  # this process's GPU when CUDA is available, else the CPU
    cpu = "cpu"
    cuda = "cuda"


# Functional form: the name "skip-step" (what users write) is not a Python identifier.
OnNan = Choice("OnNan", [("stop", "stop"), ("skip-step", "skip-step")], module=__name__)


# ------------------------------------------------------------------------------------------- schema
POSITIVE_OR_NULL = rule(lambda v: v is None or (_num(v) and v > 0), "must be > 0 or null")
DROP_RATE = rule(lambda v: _num(v) and 0 <= v < 1, "must lie in [0, 1)")
JITTER = rule(lambda v: _numbers(v, 4) and min(v) >= 0 and v[3] <= 0.5,
              "must be 4 numbers >= 0 [brightness, contrast, saturation, hue] with hue <= 0.5")
SIGMA_PAIR = rule(lambda v: _numbers(v, 2) and 0 < v[0] <= v[1], "must be [min, max] with 0 < min <= max")
BLUR_P = rule(lambda v: _numbers(v, 3) and all(0 <= p <= 1 for p in v),
              "must be 3 probabilities in [0, 1] [global 1, global 2, locals]")
RGB = rule(lambda v: _numbers(v, 3), "must be 3 numbers (R, G, B)")
RGB_POSITIVE = rule(lambda v: _numbers(v, 3) and min(v) > 0, "must be 3 numbers > 0 (R, G, B)")
NOT_EMPTY = rule(lambda v: bool(str(v).strip()), "must not be empty")


@dataclass
class ModelConfig:
    name: str = "container_light_small"          # any name from `container-ssl models`, or deit_tiny/deit_small
    img_size: int = field(default=224, metadata=POSITIVE)  # nominal size (DeiT position-embedding grid)
    patch_size: Optional[int] = field(default=None, metadata=POSITIVE_OR_NULL)  # DeiT patch / Container stem stride
    drop_path_rate: float = field(default=0.1, metadata=DROP_RATE)
    out_dim: int = field(default=65536, metadata=POSITIVE)  # DINO head output dimension (prototypes)
    hidden_dim: int = field(default=2048, metadata=POSITIVE)
    bottleneck_dim: int = field(default=256, metadata=POSITIVE)
    use_bn_in_head: bool = False
    norm_last_layer: bool = True


@dataclass
class AugConfig:
    backend: AugBackend = AugBackend.cpu
    global_size: int = field(default=224, metadata=POSITIVE)
    local_size: int = field(default=96, metadata=POSITIVE)
    n_local: int = field(default=8, metadata=NON_NEGATIVE)
    global_scale: list = field(default_factory=lambda: [0.4, 1.0], metadata=SCALE_PAIR)
    local_scale: list = field(default_factory=lambda: [0.05, 0.4], metadata=SCALE_PAIR)
    interpolation: Interpolation = Interpolation.bicubic
    flip_p: float = field(default=0.5, metadata=PROBABILITY)
    jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1], metadata=JITTER)  # bright., contr., sat., hue
    jitter_p: float = field(default=0.8, metadata=PROBABILITY)
    grayscale_p: float = field(default=0.2, metadata=PROBABILITY)
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0], metadata=SIGMA_PAIR)
    blur_p: list = field(default_factory=lambda: [1.0, 0.1, 0.5], metadata=BLUR_P)  # global 1, global 2, locals
    solarize_p: float = field(default=0.2, metadata=PROBABILITY)  # global 2 only
    # ImageNet statistics: timm's, as eval/transforms.py names them (config sits below eval, so not from there)
    mean: list = field(default_factory=lambda: list(IMAGENET_DEFAULT_MEAN), metadata=RGB)
    std: list = field(default_factory=lambda: list(IMAGENET_DEFAULT_STD), metadata=RGB_POSITIVE)
    base_size: int = field(default=0, metadata=NON_NEGATIVE)  # gpu backend: loader resizes to this square (0 = global)


@dataclass
class DataConfig:
    path: str = "cifar10"                         # ImageFolder root (train/, val/), a .tar/.tar.gz of one, or cifar10
    train_split: str = "train"
    val_split: str = "val"
    cache_dir: str = ""                           # where archives are extracted / cifar10 downloaded ("" = ~/.cache)
    num_workers: int = field(default=2, metadata=NON_NEGATIVE)
    on_bad_image: BadImagePolicy = BadImagePolicy.skip
    subset: int = field(default=0, metadata=NON_NEGATIVE)       # use only the first N images per split after a seeded shuffle (0 = all)


@dataclass
class OptimConfig:
    optimizer: OptimizerName = OptimizerName.adamw
    batch_size_per_gpu: int = field(default=64, metadata=POSITIVE)
    epochs: int = field(default=100, metadata=POSITIVE)
    base_lr: float = field(default=0.0005, metadata=POSITIVE)   # peak lr = base_lr * global_batch / 256
    min_lr: float = field(default=1.0e-6, metadata=NON_NEGATIVE)
    warmup_epochs: int = field(default=10, metadata=NON_NEGATIVE)   # <= epochs
    weight_decay: float = field(default=0.04, metadata=NON_NEGATIVE)
    weight_decay_end: float = field(default=0.4, metadata=NON_NEGATIVE)
    clip_grad: float = field(default=3.0, metadata=NON_NEGATIVE)    # 0 disables
    freeze_last_layer: int = field(default=1, metadata=NON_NEGATIVE)  # epochs with the head's last layer frozen
    momentum_teacher: float = field(default=0.996, metadata=UNIT)
    momentum_teacher_end: float = field(default=1.0, metadata=UNIT)
    amp: AmpMode = AmpMode.auto


@dataclass
class LossConfig:
    student_temp: float = field(default=0.1, metadata=POSITIVE)
    warmup_teacher_temp: float = field(default=0.04, metadata=POSITIVE)
    teacher_temp: float = field(default=0.07, metadata=POSITIVE)
    warmup_teacher_temp_epochs: int = field(default=30, metadata=NON_NEGATIVE)
    center_momentum: float = field(default=0.9, metadata=UNIT)


@dataclass
class MonitorConfig:
    knn_every: int = field(default=0, metadata=NON_NEGATIVE)    # epochs between online kNN checks (0 = off)
    knn_k: int = field(default=20, metadata=POSITIVE)
    knn_temperature: float = field(default=0.07, metadata=POSITIVE)
    knn_train_images: int = field(default=0, metadata=NON_NEGATIVE)  # cap on the labelled bank (0 = whole train split)
    knn_val_images: int = field(default=0, metadata=NON_NEGATIVE)    # cap on the queries (0 = whole val split)
    log_every: int = field(default=10, metadata=POSITIVE)       # iterations between console/metric lines
    log_images: bool = True                       # a few crops to TensorBoard at the first step
    rank_every: int = field(default=1, metadata=NON_NEGATIVE)   # epochs between RankMe / embedding-std checks (0 = off)
    rank_images: int = field(default=512, metadata=POSITIVE)    # the fixed train batch they are computed on
    collapse_std: float = field(default=0.1, metadata=NON_NEGATIVE)  # warn when the normalised embedding std (1 = isotropic) is below


@dataclass
class PretrainConfig:
    output_dir: str = field(default="runs/pretrain", metadata=NOT_EMPTY)
    seed: int = field(default=0, metadata=NON_NEGATIVE)
    device: Device = Device.auto
    checkpoint_every_epochs: int = field(default=10, metadata=NON_NEGATIVE)  # periodic checkpoint_XXXX.pt (0 = none)
    checkpoint_every_steps: int = field(default=0, metadata=NON_NEGATIVE)    # also refresh checkpoint.pt every N iterations
    on_nan: OnNan = OnNan["stop"]
    max_steps: int = field(default=0, metadata=NON_NEGATIVE)    # stop after this many iterations (0 = run all epochs)
    max_minutes: float = field(default=0.0, metadata=NON_NEGATIVE)  # wall-time budget: stop (and save) at the first
                                                                    # step boundary after this many minutes of training (0 = none)
    channels_last: bool = False
    compile: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# Checks across keys, per schema: (key named in the message, test on the whole config, what is valid).
CROSS_CHECKS: dict[type, tuple[tuple[str, Callable[[Any], bool], str], ...]] = {
    PretrainConfig: (
        ("optim.warmup_epochs", lambda c: c.optim.warmup_epochs <= c.optim.epochs, "must be <= optim.epochs"),
    ),
}


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None,
                schema: type = PretrainConfig) -> DictConfig:
    """Merge a YAML file and ``key=value`` overrides onto the schema; bad keys/types raise UserError."""
    cfg = OmegaConf.structured(schema)
    where, fix_in = "defaults", "the schema defaults"
    try:
        if path is not None:
            where = fix_in = str(path)
            cfg = OmegaConf.merge(cfg, _read_yaml(Path(path)))
        if overrides:
            where, fix_in = "command-line overrides", "the key=value overrides"
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:  # ConfigKeyError, ValidationError ...
        raise UserError(_explain(e, where, schema, fix_in)) from None
    sources = ([str(path)] if path is not None else []) + (["the key=value overrides"] if overrides else [])
    validate(cfg, schema, " or ".join(sources) or "the schema defaults")
    return cfg


def validate(cfg: Any, schema: type = PretrainConfig, where: str = "the config") -> None:
    """Apply every field's :func:`rule` and the schema's cross-key checks; the first failure is a UserError."""
    for key, value, (ok, says) in _checked_values(cfg, schema):
        if not ok(value):
            raise UserError(f"config key '{key}' {says}, got {value!r}; fix it in {where}")
    for key, ok, says in CROSS_CHECKS.get(schema, ()):
        if not ok(cfg):
            value = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else None
            raise UserError(f"config key '{key}' {says}, got {value!r}; fix it in {where}")


def _checked_values(cfg: Any, schema: type, prefix: str = ""):
    """(dotted key, plain value, (ok, says)) for every field of ``schema`` (recursively) that declares a rule."""
    for f in dataclasses.fields(schema):
        value = cfg.get(f.name) if isinstance(cfg, DictConfig) else getattr(cfg, f.name)
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            yield from _checked_values(value, sub, f"{prefix}{f.name}.")
        elif "check" in f.metadata:
            if isinstance(value, DictConfig) or OmegaConf.is_list(value):
                value = OmegaConf.to_container(value, resolve=True)
            yield f"{prefix}{f.name}", value, f.metadata["check"]


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (saved next to every run)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A plain-python copy (safe to store inside a ``weights_only`` checkpoint): a :class:`Choice` becomes its string."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# Keys that may differ when a run is resumed: where files live, how fast they load, what is monitored and
# when it is saved. Everything else shapes the training trajectory, so changing it breaks exact resume.
RESUME_FREE_KEYS = ("output_dir", "device", "compile", "max_steps", "max_minutes", "on_nan",
                    "checkpoint_every_epochs", "checkpoint_every_steps", "data.path", "data.cache_dir",
                    "data.num_workers", "data.on_bad_image", "monitor.")


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


MAX_CONFIG_BYTES = 1 << 20    # a config is a few KiB; anything larger is not a config
MAX_CONFIG_NODES = 100_000    # YAML nodes after expanding aliases ("billion laughs" expands to ~10^9)


def _read_yaml(path: Path) -> dict:
    """The mapping in a YAML config file, read safely: bounded size, UTF-8, no alias bombs or cycles."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {size} bytes, more than the {MAX_CONFIG_BYTES} a config may have; "
                        "give the YAML file from configs/pretrain/ you meant")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = _safe_load_bounded(text, path)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def _safe_load_bounded(text: str, path: Path) -> Any:
    """``yaml.safe_load`` that first measures the node graph with its aliases expanded.

    Why: safe_load builds aliases as shared references, so ``a: &a [*a]`` (a cycle) or nested aliases that
    expand to 10^9 nodes load in microseconds, and then merging into the config recurses forever or fills
    the memory. Counting each node once per path that reaches it (memoised) finds both before construction.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}
        visiting: set[int] = set()

        def expanded(n: yaml.Node) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            if id(n) in visiting:
                raise UserError(f"config file {path} has a recursive YAML alias (near line {n.start_mark.line + 1}); "
                                "a config cannot contain itself: replace the alias by the values")
            visiting.add(id(n))
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(expanded(child) for child in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(expanded(k) + expanded(v) for k, v in n.value)
            visiting.discard(id(n))
            sizes[id(n)] = total
            if total > MAX_CONFIG_NODES:
                raise UserError(f"config file {path} expands to more than {MAX_CONFIG_NODES} values through YAML "
                                "aliases; a config is small: write the values out or use fewer aliases")
            return total

        expanded(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _explain(e: OmegaConfBaseException, where: str, schema: type, fix_in: str) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) and key:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(OmegaConf.structured(schema), parent, default=None)  # "" selects the root
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        return f"unknown config key '{key}' in {where}; valid keys{' under ' + parent if parent else ''}: {', '.join(valid)}"
    default = OmegaConf.select(OmegaConf.structured(schema), key, default=None) if key else None
    if isinstance(default, Choice):  # the same line as a failed range check
        choices = ", ".join(m.value for m in type(default))
        return f"config key '{key}' must be one of {choices}, got {getattr(e, 'value', None)!r}; fix it in {fix_in}"
    if key:
        return f"bad value for config key '{key}' in {where}: {msg}"
    return f"bad config in {where}: {msg}"
