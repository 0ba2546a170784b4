"""Trustworthy evaluator figures: refused weights and features, honest lr/epoch choice, reproducible finetune.

Each test compares with an independent reference (the counts written into the file, brute-force label
bookkeeping, the same run repeated) and fails on the evaluators as they were before these checks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint, save_atomic
from container_ssl.cli import main
from container_ssl.errors import UserError
from container_ssl.eval import probe as probe_module

FAST = ["--num-workers", "0", "--batch-size", "100"]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) <= 1, err
    return status, lines[0] if lines else ""


def _edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    blob = load_checkpoint(src)
    edit(blob)
    save_atomic(blob, dst)
    return dst


# ---------------------------------------------------------------- load_checkpoint tells files apart


def test_load_checkpoint_tells_not_a_checkpoint_damaged_and_unsafe_apart(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    noise = tmp_path / "checkpoint.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    assert noise.read_bytes()[:1] not in (b"\x80", b"P")  # really neither a zip nor a pickle header
    text = tmp_path / "notes.pt"
    text.write_text("epoch,loss\n1,2.0\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    legacy_cut = tmp_path / "legacy_cut.pt"
    legacy_cut.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"w": torch.zeros(3), "when": __import__("datetime").date(2020, 1, 1)}, unsafe)

    def message(path: Path) -> str:
        with pytest.raises(UserError) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value)
        return str(e.value)

    for path in (noise, text):
        assert "is not a PyTorch checkpoint" in message(path) and "could run code" not in message(path)
    assert "is empty (0 bytes)" in message(empty)
    for path in (truncated, legacy_cut):
        assert "unreadable or truncated" in message(path) and "could run code" not in message(path)
    assert "could run code" in message(unsafe) and "datetime.date" in message(unsafe)
    assert torch.equal(load_checkpoint(legacy)["w"], torch.zeros(3))  # the legacy format still loads


# ---------------------------------------------------------------- weights and features


@pytest.mark.parametrize("command", ["knn", "linear", "finetune"])
def test_non_finite_teacher_is_refused_by_every_evaluator(command, pretrain_run, tmp_path, capsys):
    def poison(blob):  # 12 NaN/inf values in two teacher tensors; the student stays finite
        weight = blob["teacher"]["backbone.norm.weight"]
        weight[:7] = float("nan")
        blob["teacher"]["backbone.stages.0.blocks.0.mlp.fc1.weight"].view(-1)[:5] = float("inf")

    ckpt = _edited_checkpoint(pretrain_run / "checkpoint.pt", tmp_path / "run" / "checkpoint.pt", poison)
    status, line = _cli([command, "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "out"), *FAST], capsys)
    assert status == 2
    assert f"teacher weights of {ckpt} hold 12 non-finite values in 2 tensors" in line, line
    assert "backbone.norm.weight (7)" not in line and "norm.weight (7)" in line  # named without the wrapper
    assert not (tmp_path / "out" / f"{command}.json").exists()


def test_teacher_entry_that_is_not_a_state_dict(pretrain_run, tmp_path, capsys):
    cases = {
        "list": (lambda b: b.update(teacher=[torch.zeros(2)]), "'teacher' is a list, not a state dict"),
        "tensor": (lambda b: b.update(teacher=torch.zeros(2)), "'teacher' is a Tensor, not a state dict"),
        "strings": (lambda b: b["teacher"].update({"backbone.norm.weight": "ones"}),
                    "1 entries are not tensors (backbone.norm.weight (str))"),
    }
    for name, (edit, expected) in cases.items():
        ckpt = _edited_checkpoint(pretrain_run / "checkpoint.pt", tmp_path / f"{name}.pt", edit)
        status, line = _cli(["knn", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path), *FAST], capsys)
        assert status == 2 and str(ckpt) in line and expected in line, (name, line)


def test_non_finite_features_are_refused(pretrain_run, tmp_path, capsys):
    # finite weights whose features overflow float32: the final norm's scale at 3e38
    def overflow(blob):
        for net in ("teacher", "student"):
            blob[net]["backbone.norm.weight"].fill_(3e38)

    ckpt = _edited_checkpoint(pretrain_run / "checkpoint.pt", tmp_path / "run" / "checkpoint.pt", overflow)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)["teacher"].values() if v.is_floating_point())
    for command, extra in (("knn", ["--k", "5"]), ("linear", ["--cached-features"])):
        status, line = _cli([command, "--checkpoint", str(ckpt), *extra, "--no-feature-cache",
                             "--output-dir", str(tmp_path / "out"), *FAST], capsys)
        assert status == 2 and f"features of {ckpt} hold" in line and "non-finite values" in line, line
        assert not (tmp_path / "out" / f"{command}.json").exists()


# ---------------------------------------------------------------- options refused at parse time


@pytest.mark.parametrize("argv, option", [
    (["knn", "--checkpoint", "x.pt", "--num-workers", "-1"], "--num-workers"),
    (["knn", "--checkpoint", "x.pt", "--k", "20", "0"], "--k"),
    (["knn", "--checkpoint", "x.pt", "--temperature", "0"], "--temperature"),
    (["knn", "--checkpoint", "x.pt", "--temperature", "nan"], "--temperature"),
    (["knn", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size"),
    (["knn", "--checkpoint", "x.pt", "--img-size", "0"], "--img-size"),
    (["knn", "--checkpoint", "x.pt", "--crop-ratio", "0"], "--crop-ratio"),
    (["knn", "--checkpoint", "x.pt", "--chunk-size", "-3"], "--chunk-size"),
    (["linear", "--checkpoint", "x.pt", "--epochs", "0"], "--epochs"),
    (["linear", "--checkpoint", "x.pt", "--lrs", "0.1", "-1"], "--lrs"),
    (["linear", "--checkpoint", "x.pt", "--n-last-blocks", "-1"], "--n-last-blocks"),
    (["linear", "--checkpoint", "x.pt", "--holdout-fraction", "1"], "--holdout-fraction"),
    (["linear", "--checkpoint", "x.pt", "--crop-scale", "0", "1"], "--crop-scale"),
    (["linear", "--checkpoint", "x.pt", "--selection", "test"], "--selection"),
    (["finetune", "--label-fraction", "0"], "--label-fraction"),
    (["finetune", "--label-fraction", "1.5"], "--label-fraction"),
    (["finetune", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["finetune", "--weight-decay", "-0.1"], "--weight-decay"),
    (["finetune", "--drop-path", "1"], "--drop-path"),
    (["finetune", "--mixup", "-1"], "--mixup"),
    (["finetune", "--mixup-prob", "2"], "--mixup-prob"),
    (["finetune", "--smoothing", "1"], "--smoothing"),
    (["finetune", "--layer-decay", "0"], "--layer-decay"),
    (["finetune", "--clip-grad", "0"], "--clip-grad"),
    (["finetune", "--opt", "adamww"], "--opt"),
    (["models", "--img-size", "0"], "--img-size"),
    (["models", "--patch-size", "0"], "--patch-size"),
    (["models", "--num-classes", "-1"], "--num-classes"),
])
def test_out_of_range_options_are_one_line_at_parse_time(argv, option, capsys):
    status, line = _cli(argv, capsys)
    assert status == 2 and f"argument {option}" in line and f"{argv[0]} --help" in line, line


def test_n_last_blocks_beyond_the_model(pretrain_run, tmp_path, capsys):
    status, line = _cli(["linear", "--checkpoint", str(pretrain_run / "checkpoint.pt"), "--n-last-blocks", "5",
                         "--output-dir", str(tmp_path), *FAST], capsys)
    assert status == 2 and line.endswith(
        "--n-last-blocks 5 is more than the 4 stages of container_light_nano; pass 0..4"), line


# ---------------------------------------------------------------- linear probe: honest selection


def test_holdout_split_is_class_balanced_deterministic_and_disjoint():
    from container_ssl.eval.probe import holdout_split

    labels = torch.tensor([c for c, n in enumerate([50, 20, 7, 3, 2]) for _ in range(n)])[torch.randperm(82)]
    fit, held = holdout_split(labels, 0.1, seed=3)
    assert sorted(fit.tolist() + held.tolist()) == list(range(82))  # disjoint and covering
    per_class = torch.bincount(labels[held], minlength=5).tolist()
    assert per_class == [5, 2, 1, 1, 1]  # round(0.1 * n_c), at least one
    assert torch.bincount(labels[fit], minlength=5).min() >= 1  # every class is still learnt
    again_fit, again_held = holdout_split(labels, 0.1, seed=3)
    assert torch.equal(held, again_held) and torch.equal(fit, again_fit)
    assert not torch.equal(holdout_split(labels, 0.1, seed=4)[1], held)
    with pytest.raises(UserError, match="single train image"):
        holdout_split(torch.tensor([0, 0, 1]), 0.5, seed=0)


def _val_cache(cache: Path) -> Path:
    """The cached val features (100 images) among the linear probe's cache files."""
    (val,) = [p for p in cache.glob("*_last2.pt") if load_checkpoint(p)["meta"]["n_listed"] == 100]
    return val


def test_val_is_evaluated_once_and_never_chooses(pretrain_run, tmp_path, capsys, monkeypatch):
    evaluated_rows: list[int] = []
    original = probe_module.LinearProbe.evaluate

    def counting(self, batches):
        batches = list(batches)
        evaluated_rows.append(sum(int(f.shape[0]) for f, _ in batches))
        return original(self, batches)

    monkeypatch.setattr(probe_module.LinearProbe, "evaluate", counting)
    cache = tmp_path / "cache"
    base = ["linear", "--checkpoint", str(pretrain_run / "checkpoint.pt"), "--cached-features", "--lrs", "0.01",
            "1.0", "10.0", "--epochs", "12", "--feature-cache", str(cache), "--num-workers", "0", "--batch-size", "64"]
    assert _cli([*base, "--output-dir", str(tmp_path / "a")], capsys)[0] == 0
    first = json.loads((tmp_path / "a" / "linear.json").read_text())
    # 12 evaluations of the 30 held-out images (3 per class), then the 100 val images exactly once
    assert evaluated_rows == [30] * 12 + [100]

    # permute the val labels in the cached val features: the choice must not move, only the figure
    val_path = _val_cache(cache)
    blob = load_checkpoint(val_path)
    blob["labels"] = blob["labels"][torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    save_atomic(blob, val_path)
    assert _cli([*base, "--output-dir", str(tmp_path / "b")], capsys)[0] == 0
    second = json.loads((tmp_path / "b" / "linear.json").read_text())
    for key in ("best_base_lr", "best_epoch", "holdout_top1", "per_lr", "history"):
        assert first[key] == second[key], key
    assert first["top1"] != second["top1"]

    # DINO's reporting stays available, and says so
    evaluated_rows.clear()
    assert _cli([*base, "--selection", "val", "--output-dir", str(tmp_path / "c")], capsys)[0] == 0
    dino = json.loads((tmp_path / "c" / "linear.json").read_text())
    assert dino["selection"] == "val" and dino["val_evaluations"] == 12 and evaluated_rows == [100] * 12
    assert dino["top1"] == max(max(h["val_top1"]) for h in dino["history"])


# ---------------------------------------------------------------- finetune reproducibility


def test_finetune_is_reproducible_for_a_fixed_seed(pretrain_run, tmp_path, capsys):
    def finetune(seed: int, name: str) -> dict:
        out = tmp_path / name
        argv = ["finetune", "--checkpoint", str(pretrain_run / "checkpoint.pt"), "--label-fraction", "0.1",
                "--epochs", "2", "--warmup-epochs", "1", "--seed", str(seed), "--output-dir", str(out),
                "--num-workers", "0", "--batch-size", "16"]
        assert _cli(argv, capsys)[0] == 0
        return load_checkpoint(out / "finetune_0.1_best.pt")["model"]

    first, again, other = finetune(0, "a"), finetune(0, "b"), finetune(1, "c")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)  # Mixup/CutMix and RandAugment draws repeat
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
