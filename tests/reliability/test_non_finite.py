"""Drill 3: a non-finite loss stops the run with the step, the loss terms and an untouched checkpoint.

Why: a NaN that goes unnoticed turns days of compute into garbage, and one that is noticed must not
overwrite the last good checkpoint. The NaN comes from one corrupted batch (injected at a chosen step by
``fault_cli.py``, which also prints the checkpoint's sha256 at that moment) and from an absurd learning
rate given on the command line. ``--on-nan skip-step`` must skip such a step without a trace: the loss
centre and the BatchNorm statistics were already moved by its forward pass.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.cli import main as cli_main

from .figures import record, table
from .helpers import (
    one_line_error,
    run_cli,
    sha256,
    short,
    temp_files,
    tiny_args,
    trainer_checkpoint,
)

EXTRA = ["data.subset=64", "optim.epochs=2", "checkpoint_every_steps=1"]  # 4 iterations per epoch, 8 in all
NAN_AT = 3


def _non_finite(ckpt: dict) -> list[str]:
    tensors = {f"{net}.{k}": v for net in ("student", "teacher") for k, v in ckpt[net].items()}
    tensors["loss.center"] = ckpt["loss"]["center"]
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


@pytest.mark.reliability
def test_nan_stops_with_step_terms_and_untouched_checkpoint(cifar10_small, tmp_path):
    rows = []
    out = tmp_path / "stop"
    run = run_cli(tiny_args(cifar10_small, out, *EXTRA), fault=True, CONTAINER_SSL_FAULT_NAN_AT=str(NAN_AT))
    line = one_line_error(run.stderr, run.returncode)
    before = re.search(r"checkpoint sha256 (\w+)", run.stdout).group(1)
    after = sha256(out / "checkpoint.pt")
    for text in (f"non-finite loss at step {NAN_AT}", "loss=nan", "teacher_entropy=", str(out / "checkpoint.pt"),
                 "--on-nan skip-step"):
        assert text in line, f"{text!r} not in {line!r}"
    assert before == after, "the last good checkpoint changed"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["iteration"] == NAN_AT - 1 and not _non_finite(ckpt) and not temp_files(out)
    rows.append((f"NaN batch at step {NAN_AT}", short(line.replace(str(tmp_path), "$TMP"), 170)))
    same = "identical" if before == after else "CHANGED"
    rows.append(("", f"checkpoint.pt sha256 before {before[:12]}, after {after[:12]}: {same}"))

    again = run_cli(tiny_args(cifar10_small, out, *EXTRA))  # the data is fine again: resume and finish
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["finished"]
    rows.append(("", "resume from it (no fault): finished"))

    out = tmp_path / "lr"
    run = run_cli(tiny_args(cifar10_small, out, *EXTRA, "optim.base_lr=1e30"))
    line = one_line_error(run.stderr, run.returncode)
    step = int(re.search(r"non-finite loss at step (\d+)", line).group(1))
    assert "loss=" in line and "teacher_entropy=" in line and str(out / "checkpoint.pt") in line
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == step - 1
    rows.append(("optim.base_lr=1e30", short(line.replace(str(tmp_path), "$TMP"), 170)))
    record("drill 3a: non-finite loss, --on-nan stop (default)", table(("cause", "outcome"), rows))


@pytest.mark.reliability
def test_nan_skip_step_skips_counts_and_finishes_clean(cifar10_small, tmp_path):
    out = tmp_path / "skip"
    run = run_cli([*tiny_args(cifar10_small, out, *EXTRA), "--on-nan", "skip-step"], fault=True,
                  CONTAINER_SSL_FAULT_NAN_AT=str(NAN_AT))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "checkpoint.pt")
    bad = _non_finite(ckpt)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    record("drill 3b: non-finite loss, --on-nan skip-step",
           f"NaN batch at step {NAN_AT}: nan_steps_skipped={summary['nan_steps_skipped']}, "
           f"finished={summary['finished']}, {len(losses)} finite steps logged, "
           f"non-finite tensors in the final checkpoint: {len(bad)}")
    assert summary["finished"] and summary["nan_steps_skipped"] == 1
    assert not bad, f"the skipped step poisoned the run's state: {bad[:5]}"
    assert len(losses) == 7 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.reliability
def test_evaluators_refuse_non_finite_weights_and_features(cifar10_small, tmp_path, capfd):
    """A diverged teacher (NaN weights) or overflowing features never become a chance-level figure."""
    good = trainer_checkpoint(cifar10_small, tmp_path / "good")
    blob = torch.load(good, weights_only=True)
    nan = {k: v.clone() for k, v in blob["teacher"].items()}
    nan["backbone.norm.weight"][:12] = float("nan")  # 12 NaN in one teacher tensor
    (tmp_path / "nan").mkdir()
    torch.save({**blob, "teacher": nan}, tmp_path / "nan" / "checkpoint.pt")
    huge = {k: v.clone() for k, v in blob["teacher"].items()}
    huge["backbone.norm.weight"].fill_(3e38)  # finite weights, float32 features overflow
    (tmp_path / "huge").mkdir()
    torch.save({**blob, "teacher": huge}, tmp_path / "huge" / "checkpoint.pt")
    fast = ["--num-workers", "0", "--batch-size", "64"]
    cases = [
        ("12 NaN in the teacher", "knn", "nan", ["--k", "5"], "teacher weights of", "hold 12 non-finite values"),
        ("12 NaN in the teacher", "linear", "nan", ["--cached-features"], "teacher weights of",
         "hold 12 non-finite values"),
        ("12 NaN in the teacher", "finetune", "nan", ["--epochs", "1"], "teacher weights of",
         "hold 12 non-finite values"),
        ("features overflow float32", "knn", "huge", ["--k", "5"], "features of", "non-finite values"),
        ("features overflow float32", "linear", "huge", ["--cached-features"], "features of", "non-finite values"),
    ]
    rows = []
    for kind, command, folder, extra, *expected in cases:
        ckpt = tmp_path / folder / "checkpoint.pt"
        out = tmp_path / folder / f"eval_{command}"
        capfd.readouterr()
        no_cache = ["--no-feature-cache"] if command != "finetune" else []
        status = cli_main([command, "--checkpoint", str(ckpt), *extra, *fast, *no_cache, "--output-dir", str(out)])
        line = one_line_error(capfd.readouterr().err, status)
        assert str(ckpt) in line and all(text in line for text in expected), line
        assert not list(out.glob("*.json")), f"{command} wrote a result"
        rows.append((kind, command, short(line.replace(str(tmp_path), "$TMP"), 150)))
    record("drill 3c: non-finite weights and features in the evaluators", table(("cause", "command", "outcome"), rows))


def _all_unreadable(root: Path, n: int = 32) -> Path:
    """A training set of ``n`` files in 2 classes, none of them a readable image."""
    for i in range(n):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:02d}.jpg").write_bytes(b"" if i % 3 == 0 else b"\xff\xd8\xff\xe0 not really a JPEG" * 3)
    return root


@pytest.mark.reliability
def test_runs_that_learned_nothing_fail_with_the_reason(cifar10_small, tmp_path):
    """Rules (trainer docstring): an epoch with zero trained samples, > half the steps skipped, non-finite weights."""
    rows = []

    def failed(out: Path, run, *must_contain: str) -> str:
        line = one_line_error(run.stderr, run.returncode)
        summary = json.loads((out / "summary.json").read_text())
        for text in must_contain:
            assert text in line, f"{text!r} not in {line!r}"
        assert summary["finished"] is False and summary["failure"] and must_contain[0] in summary["failure"], summary
        return line

    out = tmp_path / "unreadable"
    data = _all_unreadable(tmp_path / "bad")
    run = run_cli(tiny_args(data, out, "optim.epochs=1", "data.num_workers=1"))
    line = failed(out, run, "all 32 images of epoch 1 were unreadable", "data.on_bad_image=error")
    assert not (out / "checkpoint.pt").exists(), "an epoch that trained nothing was saved as progress"
    rows.append(("every image unreadable (32 of 32)", "exit 2", short(line.replace(str(tmp_path), "$TMP"), 150)))

    skip = [*EXTRA, "on_nan=skip-step"]
    out = tmp_path / "epoch"
    run = run_cli(tiny_args(cifar10_small, out, *skip), fault=True, CONTAINER_SSL_FAULT_NAN_AT="1,2,3,4")
    line = failed(out, run, "epoch 1 trained no samples: 4 of 4 steps skipped for a non-finite loss")
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 3  # the last mid-epoch save, not the epoch's
    rows.append(("skip-step, NaN at steps 1-4 (all of epoch 1)", "exit 2", short(line, 150)))

    out = tmp_path / "most"
    run = run_cli(tiny_args(cifar10_small, out, *skip), fault=True, CONTAINER_SSL_FAULT_NAN_AT="1,2,3,5,6")
    line = failed(out, run, "5 of 8 steps skipped for a non-finite loss (more than 50%)")
    rows.append(("skip-step, NaN at 5 of 8 steps", "exit 2", short(line, 150)))

    out = tmp_path / "half"
    run = run_cli(tiny_args(cifar10_small, out, *skip), fault=True, CONTAINER_SSL_FAULT_NAN_AT="1,2,5,6")
    summary = json.loads((out / "summary.json").read_text())
    assert run.returncode == 0 and summary["finished"] and summary["nan_steps_skipped"] == 4, run.stderr[-3000:]
    rows.append(("skip-step, NaN at 4 of 8 steps (the bound)", "exit 0", "finished: true, nan_steps_skipped=4"))

    out = tmp_path / "lr"  # weights that overflow: steps then skipped, or weights refused at the next save
    run = run_cli(tiny_args(cifar10_small, out, *skip, "optim.base_lr=1e30"))
    line = one_line_error(run.stderr, run.returncode)
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert summary["finished"] is False and summary["failure"] and not _non_finite(ckpt), (summary, _non_finite(ckpt))
    rows.append(("skip-step, optim.base_lr=1e30", "exit 2",
                 short(line.replace(str(tmp_path), "$TMP"), 150) + f" [checkpoint.pt: iteration {ckpt['iteration']}, "
                 "finite]"))
    record("drill 3d: runs that learned nothing do not report success", table(("run", "status", "outcome"), rows))
