"""Config range checks and safe YAML reading: bad values fail at load time with the key named.

Why: a batch size of 0, a negative learning rate or a recursive YAML alias used to surface as a traceback
(or a run that trains on garbage) minutes later. Each case below names the key or file the message must
contain; the expected outcome is written out by hand, not taken from the code under test.
"""

from __future__ import annotations

import dataclasses
import pickle
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from container_ssl.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    PretrainConfig,
    changed_keys,
    load_config,
    to_dict,
    to_yaml,
    validate,
)
from container_ssl.errors import UserError

# (override, key the message must name, text it must contain)
BAD_VALUES = [
    ("optim.batch_size_per_gpu=0", "optim.batch_size_per_gpu", "> 0"),
    ("optim.batch_size_per_gpu=-8", "optim.batch_size_per_gpu", "> 0"),
    ("optim.base_lr=-0.001", "optim.base_lr", "> 0"),
    ("optim.base_lr=nan", "optim.base_lr", "> 0"),
    ("optim.min_lr=-1e-6", "optim.min_lr", ">= 0"),
    ("optim.epochs=0", "optim.epochs", "> 0"),
    ("optim.warmup_epochs=101", "optim.warmup_epochs", "<= optim.epochs"),
    ("optim.momentum_teacher=1.5", "optim.momentum_teacher", "[0, 1]"),
    ("optim.weight_decay=-0.1", "optim.weight_decay", ">= 0"),
    ("optim.clip_grad=-3", "optim.clip_grad", ">= 0"),
    ("optim.optimizer=lamb", "optim.optimizer", "adamw, sgd"),
    ("optim.amp=fp32", "optim.amp", "auto, bf16, fp16, none"),
    ("loss.student_temp=0", "loss.student_temp", "> 0"),
    ("loss.teacher_temp=-0.07", "loss.teacher_temp", "> 0"),
    ("loss.center_momentum=2", "loss.center_momentum", "[0, 1]"),
    ("monitor.log_every=0", "monitor.log_every", "> 0"),
    ("monitor.knn_k=0", "monitor.knn_k", "> 0"),
    ("data.subset=-1", "data.subset", ">= 0"),
    ("data.num_workers=-2", "data.num_workers", ">= 0"),
    ("data.on_bad_image=ignore", "data.on_bad_image", "skip, error"),
    ("aug.flip_p=1.5", "aug.flip_p", "[0, 1]"),
    ("aug.global_scale=[0.9,0.4]", "aug.global_scale", "min <= max"),
    ("aug.local_scale=[0,0.4]", "aug.local_scale", "0 < min"),
    ("aug.global_scale=[0.4,1.2]", "aug.global_scale", "max <= 1"),
    ("aug.global_scale=[0.1,0.5,0.9]", "aug.global_scale", "[min, max]"),
    ("aug.local_scale=[a,b]", "aug.local_scale", "[min, max]"),
    ("aug.blur_p=[1.0,0.1]", "aug.blur_p", "3 probabilities"),
    ("aug.std=[0.2,0,0.2]", "aug.std", "> 0"),
    ("aug.global_size=0", "aug.global_size", "> 0"),
    ("aug.interpolation=lanczos", "aug.interpolation", "nearest, bilinear, bicubic"),
    ("aug.interpolation=BICUBIC", "aug.interpolation", "nearest, bilinear, bicubic"),
    ("aug.backend=tpu", "aug.backend", "cpu, gpu"),
    ("model.patch_size=0", "model.patch_size", "> 0 or null"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate", "[0, 1)"),
    ("model.out_dim=-1", "model.out_dim", "> 0"),
    ("checkpoint_every_steps=-1", "checkpoint_every_steps", ">= 0"),
    ("on_nan=ignore", "on_nan", "stop, skip-step"),
    ("device=tpu", "device", "auto, cpu, cuda"),
]


@pytest.mark.parametrize(("override", "key", "text"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_refused_at_load_time_naming_the_key(override, key, text):
    with pytest.raises(UserError) as e:
        load_config(overrides=[override])
    msg = str(e.value)
    assert f"'{key}'" in msg and text in msg and "\n" not in msg, msg
    assert "key=value overrides" in msg


def test_boundary_values_are_accepted():
    cfg = load_config(overrides=["optim.warmup_epochs=100", "optim.min_lr=0", "aug.flip_p=1", "aug.flip_p=0",
                                 "optim.momentum_teacher=1.0", "data.subset=0", "model.patch_size=null",
                                 "aug.global_scale=[1.0,1.0]", "optim.clip_grad=0", "monitor.log_every=1"])
    assert cfg.optim.warmup_epochs == cfg.optim.epochs == 100 and cfg.model.patch_size is None


def _fields(schema: type, prefix: str = ""):
    """(dotted key, dataclass field, resolved type) for every leaf field of the schema."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            yield from _fields(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def test_every_numeric_or_choice_field_declares_a_check():
    """A new numeric key without a range check is the bug this pass exists to prevent.

    A choice field is checked by its type: OmegaConf refuses any string outside its Enum.
    """
    free_text = {"model.name", "data.path", "data.train_split", "data.val_split", "data.cache_dir"}
    unchecked = [key for key, f, t in _fields(PretrainConfig)
                 if "check" not in f.metadata and t is not bool and key not in free_text
                 and not (isinstance(t, type) and issubclass(t, Enum))]
    assert not unchecked, f"config keys without a range check: {unchecked}"


# Every value users write today, by hand: YAML files, key=value overrides and old runs' config.yaml use them.
CHOICES = {
    "aug.backend": ("cpu", "gpu"),
    "aug.interpolation": ("nearest", "bilinear", "bicubic"),
    "data.on_bad_image": ("skip", "error"),
    "optim.optimizer": ("adamw", "sgd"),
    "optim.amp": ("auto", "bf16", "fp16", "none"),
    "device": ("auto", "cpu", "cuda"),
    "on_nan": ("stop", "skip-step"),
}


def test_the_choice_fields_are_exactly_the_typed_ones():
    typed = {key for key, _, t in _fields(PretrainConfig) if isinstance(t, type) and issubclass(t, Enum)}
    assert typed == set(CHOICES)


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in CHOICES.items() for v in vs])
def test_every_choice_reads_as_its_string_and_round_trips(key, value, tmp_path):
    cfg = load_config(overrides=[f"{key}={value}"])
    got = OmegaConf.select(cfg, key)
    assert got == value and str(got) == value and f"{got}" == value and f"{got:>10}" == f"{value:>10}"
    assert pickle.loads(pickle.dumps(got)) is got  # DataLoader workers and submitted jobs get a copy
    plain = to_dict(cfg)
    leaf = plain
    for part in key.split("."):
        leaf = leaf[part]
    assert type(leaf) is str and leaf == value  # a weights_only checkpoint stores plain strings
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert f"{key.rsplit('.', 1)[-1]}: {value}\n" in saved.read_text()
    again = load_config(saved)
    assert OmegaConf.select(again, key) is got
    assert changed_keys(plain, to_dict(again), free=()) == []


def test_an_old_runs_config_yaml_still_loads(tmp_path):
    """A config.yaml as runs saved it before the choices were typed: plain strings, and yaml.safe_dump works."""
    old = {"device": "cpu", "on_nan": "skip-step", "aug": {"backend": "gpu", "interpolation": "bilinear",
                                                             "global_scale": [0.3, 1.0]},
           "data": {"on_bad_image": "error"}, "optim": {"optimizer": "sgd", "amp": "none"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = load_config(path)
    plain = to_dict(cfg)
    yaml.safe_dump(plain)  # no Enum objects left in the plain copy
    flat, expected = _flat(plain), _flat(old)
    assert {k: flat[k] for k in expected} == expected
    assert all(type(flat[k]) is str for k, v in expected.items() if isinstance(v, str))


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_a_bad_choice_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("aug:\n  backend: tpu\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"config key 'aug.backend' must be one of cpu, gpu, got 'tpu'; fix it in {path}"


def test_validate_names_the_file_the_value_came_from(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  batch_size_per_gpu: 0\n")
    with pytest.raises(UserError, match=rf"'optim.batch_size_per_gpu' must be > 0, got 0; fix it in {path}"):
        load_config(path)
    validate(load_config())  # the defaults are valid


# ------------------------------------------------------------------------------------------ YAML reading
def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_non_utf8_yaml_is_one_line_naming_the_file(tmp_path):
    path = _write(tmp_path, "latin1.yaml", "model:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"{path} is not UTF-8 text \(byte 18\)"):
        load_config(path)


def test_recursive_alias_is_refused(tmp_path):
    path = _write(tmp_path, "loop.yaml", b"a: &a [*a]\n")
    with pytest.raises(UserError, match=rf"{path} has a recursive YAML alias \(near line 1\)"):
        load_config(path)


def test_billion_laughs_is_refused_before_it_expands(tmp_path):
    # 9 levels of 9 aliases each: 9**9 = 387,420,489 strings once expanded, 1 KB on disk
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = _write(tmp_path, "laughs.yaml", ("\n".join(lines) + "\n").encode())
    assert path.stat().st_size < 1000 and 9 ** 9 > MAX_CONFIG_NODES
    with pytest.raises(UserError, match=rf"{path} expands to more than {MAX_CONFIG_NODES} values"):
        load_config(path)


def test_oversized_config_file_is_refused(tmp_path):
    path = _write(tmp_path, "huge.yaml", b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(UserError, match=rf"{path} is {path.stat().st_size} bytes"):
        load_config(path)


def test_small_aliases_still_work(tmp_path):
    path = _write(tmp_path, "ok.yaml", b"aug:\n  global_scale: &s [0.3, 1.0]\n  local_scale: *s\n")
    cfg = load_config(path)
    assert cfg.aug.local_scale == cfg.aug.global_scale == [0.3, 1.0]
