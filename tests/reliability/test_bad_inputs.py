"""Drill 2: bad inputs give a one-line error naming the file or key and what to do, or a counted skip.

Why through the command line: "no traceback, exit status 2, exactly one ``error:`` line" is what a user
sees; the pretraining runs with unreadable images are real subprocesses with a DataLoader worker, since
a worker re-raises errors with its whole traceback. Fast-failing inputs run ``container_ssl.cli.main``
in-process (same code path, seconds instead of a start-up each).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from container_ssl.cli import main as cli_main
from container_ssl.data.images import BadImage, load_rgb

from .figures import record, table
from .helpers import one_line_error, run_cli, short, tiny_args, trainer_checkpoint

GOOD_PER_CLASS = 12


def _write_bad_dataset(cifar: Path, root: Path) -> dict[str, Path]:
    """32 train images in 2 classes: 24 good JPEGs, 4 odd colour modes, 4 unreadable files."""
    sources = {c: sorted((cifar / "train" / c).iterdir()) for c in ("airplane", "automobile")}
    for cls, files in sources.items():
        for split, picked in (("train", files[:GOOD_PER_CLASS]), ("val", files[-2:])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in picked:
                shutil.copy(f, root / split / cls / f.name)
    a, b = root / "train" / "airplane", root / "train" / "automobile"
    jpeg = sources["airplane"][-3].read_bytes()
    rgb = Image.open(sources["automobile"][-3]).convert("RGB")
    odd = {"grayscale (L)": a / "gray.jpg", "CMYK": a / "cmyk.jpg", "RGBA": b / "rgba.png",
           "palette + transparency (P)": b / "palette.png"}
    rgb.convert("L").save(odd["grayscale (L)"])
    rgb.convert("CMYK").save(odd["CMYK"])
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(odd["RGBA"])
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette.save(odd["palette + transparency (P)"], transparency=0)
    noise = random.Random(0)
    bad = {"corrupt JPEG (truncated)": a / "truncated.jpg", "corrupt JPEG (garbage body)": b / "garbled.jpg",
           "0-byte file": a / "empty.jpg", "non-image with .jpg name": b / "notes.jpg"}
    bad["corrupt JPEG (truncated)"].write_bytes(jpeg[: len(jpeg) // 2])
    bad["corrupt JPEG (garbage body)"].write_bytes(jpeg[:300] + bytes(noise.randrange(256) for _ in range(600)))
    bad["0-byte file"].write_bytes(b"")
    bad["non-image with .jpg name"].write_text("label,notes\nnot an image\n")
    return {"odd": odd, "bad": bad}  # type: ignore[return-value]


@pytest.fixture(scope="module")
def bad_data(cifar10_small, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bad_data")
    return root, _write_bad_dataset(cifar10_small, root)


def _cli(argv: list[str], capfd) -> tuple[int, str]:
    """``container-ssl ARGV`` in this process; an exception escaping ``main`` fails the test (a traceback)."""
    capfd.readouterr()
    status = cli_main(argv)
    return status, capfd.readouterr().err


def _expect_error(argv: list[str], capfd, *must_contain: str) -> str:
    status, err = _cli(argv, capfd)
    line = one_line_error(err, status)
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


@pytest.mark.reliability
def test_unreadable_images_are_skipped_and_counted_or_named(bad_data, tmp_path):
    root, files = bad_data
    rows = []
    for kind, path in files["odd"].items():  # converted, never rejected
        img = load_rgb(str(path))
        assert img.mode == "RGB" and img.size == (32, 32)
        rows.append((kind, path.name, f"converted to RGB (was {Image.open(path).mode})"))
    for kind, path in files["bad"].items():
        with pytest.raises(BadImage, match=path.name):
            load_rgb(str(path))

    # a real pretraining run with a DataLoader worker: every bad file skipped and counted, run finishes
    out = tmp_path / "skip"
    run = run_cli(tiny_args(root, out, "optim.epochs=1", "data.num_workers=1"))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["skipped_images"] == len(files["bad"]), summary
    for kind, path in files["bad"].items():
        assert path.name in run.stderr, f"skip of {path.name} not logged"
        rows.append((kind, path.name, "skipped, logged, counted"))
    rows.append(("all of the above, one epoch", "", f"finished; summary.json skipped_images={summary['skipped_images']}"))

    # the same data with data.on_bad_image=error: one line naming the file, from inside a worker
    run = run_cli(tiny_args(root, tmp_path / "error", "optim.epochs=1", "data.num_workers=1",
                            "data.on_bad_image=error"))
    line = one_line_error(run.stderr, run.returncode)
    named = [p for p in files["bad"].values() if str(p) in line]
    assert len(named) == 1 and "data.on_bad_image=skip" in line, line
    rows.append(("any of them, data.on_bad_image=error", named[0].name, short(line.replace(str(root), "$DATA"), 150)))
    record("drill 2a: bad images during a real pretraining run", table(("input", "file", "outcome"), rows))


_checkpoint = trainer_checkpoint


@pytest.mark.reliability
def test_bad_paths_config_and_checkpoints_give_one_line(cifar10_small, tmp_path, capfd):
    rows = []

    def case(kind: str, argv: list[str], *must_contain: str) -> None:
        line = _expect_error(argv, capfd, *must_contain)
        rows.append((kind, argv[0], short(line.replace(str(tmp_path), "$TMP"), 150)))

    out = str(tmp_path / "out")
    empty_class = tmp_path / "empty_class"
    shutil.copytree(cifar10_small, empty_class)
    (empty_class / "train" / "zebra").mkdir()
    case("empty class folder", tiny_args(empty_class, out), "zebra", "is empty", "add its images or remove")
    missing = tmp_path / "no" / "such" / "data"
    case("missing data path", tiny_args(missing, out), str(missing), "ImageFolder directory")
    not_tar = tmp_path / "images.tar.gz"
    not_tar.write_bytes(b"PK\x03\x04 this is a zip header, not a tar archive" * 20)
    case("archive that is not a tar", tiny_args(not_tar, out), str(not_tar), "not a tar archive")
    case("config key typo", tiny_args(cifar10_small, out, "optim.lr=0.1"), "optim.lr", "base_lr")
    case("wrong-type value", tiny_args(cifar10_small, out, "optim.epochs=ten"), "optim.epochs", "ten")

    good = _checkpoint(cifar10_small, tmp_path / "good")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    deit = _checkpoint(cifar10_small, tmp_path / "deit", "model.name=deit_tiny", "model.patch_size=4")
    wider = _checkpoint(cifar10_small, tmp_path / "wider", "model.hidden_dim=96")  # same keys, other shapes
    resume = tiny_args(cifar10_small, out)
    knn = ["knn", "--num-workers", "0", "--k", "5", "--output-dir", out, "--checkpoint"]
    case("truncated checkpoint (--resume)", [*resume, "--resume", str(truncated)],
         str(truncated), "unreadable or truncated", "previous checkpoint")
    case("truncated checkpoint (knn)", [*knn, str(truncated)], str(truncated), "unreadable or truncated")
    case("other architecture, deit_tiny (--resume)", [*resume, "--resume", str(deit)],
         str(deit), "does not fit", "missing keys", "config the run was started with")
    case("same model, other head width (--resume)", [*resume, "--resume", str(wider)],
         str(wider), "does not fit", "shape mismatches")
    case("other architecture (knn --model container_light_nano)",
         [*knn, str(deit), "--model", "container_light_nano"], str(deit), "does not fit", "--model")
    assert not (tmp_path / "out" / "checkpoint.pt").exists(), "a refused resume wrote a checkpoint"
    record("drill 2b: bad paths, config and checkpoints", table(("input", "command", "outcome"), rows))


# every user-facing evaluator/models option with a range, refused while the command line is parsed
OUT_OF_RANGE = [
    ("knn", "--num-workers", "-1"), ("knn", "--k", "0"), ("knn", "--temperature", "0"), ("knn", "--batch-size", "0"),
    ("knn", "--chunk-size", "0"), ("knn", "--img-size", "0"), ("knn", "--crop-ratio", "1.5"),
    ("linear", "--epochs", "0"), ("linear", "--lr", "-0.1"), ("linear", "--n-last-blocks", "-2"),
    ("linear", "--holdout-fraction", "0"), ("linear", "--val-freq", "0"),
    ("finetune", "--label-fraction", "0"), ("finetune", "--warmup-epochs", "-1"), ("finetune", "--drop-path", "1.5"),
    ("finetune", "--reprob", "2"), ("finetune", "--mixup", "-0.5"), ("finetune", "--min-lr", "-1"),
    ("models", "--img-size", "0"), ("models", "--patch-size", "-4"), ("models", "--num-classes", "-1"),
]


@pytest.mark.reliability
def test_out_of_range_options_and_damaged_checkpoints_give_one_line(cifar10_small, tmp_path, capfd):
    rows = []
    for command, option, value in OUT_OF_RANGE:
        argv = [command, *(["--checkpoint", "x.pt"] if command in ("knn", "linear") else []), option, value]
        line = _expect_error(argv, capfd, f"argument {option}", f"got {value}")
        rows.append((f"{option} {value}", command, short(line, 150)))

    good = trainer_checkpoint(cifar10_small, tmp_path / "good")
    knn = ["knn", "--num-workers", "0", "--k", "5", "--output-dir", str(tmp_path / "out"), "--checkpoint"]
    line = _expect_error(["linear", "--num-workers", "0", "--n-last-blocks", "9", "--output-dir",
                          str(tmp_path / "out"), "--checkpoint", str(good)], capfd, "--n-last-blocks 9", "4 stages")
    rows.append(("--n-last-blocks 9 (4 stages)", "linear", short(line, 150)))
    noise = tmp_path / "checkpoint.pt"
    noise.write_bytes(random.Random(1).randbytes(1 << 16))
    line = _expect_error([*knn, str(noise)], capfd, str(noise), "not a PyTorch checkpoint")
    assert "could run code" not in line
    rows.append(("random bytes named checkpoint.pt", "knn", short(line.replace(str(tmp_path), "$TMP"), 150)))
    blob = torch.load(good, weights_only=True)
    for name, value in (("a list", [torch.zeros(2)]), ("strings", {"backbone.norm.weight": "ones"})):
        bad = tmp_path / f"teacher_{name.replace(' ', '_')}.pt"
        torch.save({**blob, "teacher": value}, bad)
        line = _expect_error([*knn, str(bad)], capfd, str(bad), "not a state dict")
        rows.append((f"'teacher' entry is {name}", "knn", short(line.replace(str(tmp_path), "$TMP"), 150)))
    record("drill 2c: out-of-range options and files that are not checkpoints",
           table(("input", "command", "outcome"), rows))
