"""Drill 2: bad inputs give a one-line error naming the file or key and what to do, or a counted skip.

Why through the command line: "no traceback, exit status 2, exactly one ``error:`` line" is what a user
sees; the pretraining runs with unreadable images are real subprocesses with a DataLoader worker, since
a worker re-raises errors with its whole traceback. Fast-failing inputs run ``container_ssl.cli.main``
in-process (same code path, seconds instead of a start-up each).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from container_ssl.cli import main as cli_main
from container_ssl.data import build_dataset
from container_ssl.data.images import BadImage, load_rgb
from container_ssl.data.subsets import read_subset_file, write_subset_file

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
    gray = np.asarray(rgb.convert("L"))
    deep = {"16-bit grayscale PNG (I;16)": (a / "deep16.png", (gray.astype(np.uint16) * 257)),
            "float TIFF in [0, 1] (F)": (b / "float.tiff", gray.astype(np.float32) / 255),
            "GIF (palette)": (b / "anim.gif", None)}
    for kind, (path, pixels) in deep.items():
        (rgb.convert("P") if pixels is None else Image.fromarray(pixels)).save(path)
        odd[kind] = path
    noise = random.Random(0)
    bad = {"corrupt JPEG (truncated)": a / "truncated.jpg", "corrupt JPEG (garbage body)": b / "garbled.jpg",
           "0-byte file": a / "empty.jpg", "non-image with .jpg name": b / "notes.jpg"}
    bad["corrupt JPEG (truncated)"].write_bytes(jpeg[: len(jpeg) // 2])
    bad["corrupt JPEG (garbage body)"].write_bytes(jpeg[:300] + bytes(noise.randrange(256) for _ in range(600)))
    bad["0-byte file"].write_bytes(b"")
    bad["non-image with .jpg name"].write_text("label,notes\nnot an image\n")
    hdr = b / "radiance.tiff"
    Image.fromarray(gray.astype(np.float32) * 4.0).save(hdr)  # values up to ~1000: no agreed 8-bit scale
    bad["float TIFF outside [0, 1]"] = hdr
    left_out = {"text file (.txt) in a class folder": a / "labels.txt", "symlink loop (loop -> ..)": a / "loop",
                "symlink to a sibling class folder": a / "cars"}
    left_out["text file (.txt) in a class folder"].write_text("airplane\n")
    os.symlink("..", left_out["symlink loop (loop -> ..)"])
    os.symlink("../automobile", left_out["symlink to a sibling class folder"])
    return {"odd": odd, "bad": bad, "left_out": left_out, "gray": gray}  # type: ignore[return-value]


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
        outcome = f"converted to RGB (was {Image.open(path).mode})"
        if path.suffix in (".png", ".tiff") and Image.open(path).mode != "RGBA" and kind != "palette + transparency (P)":
            assert np.array_equal(np.asarray(img)[..., 0], files["gray"]), kind  # scaled back to the 8-bit source
            outcome += ", equal to the 8-bit source"
        rows.append((kind, path.name, outcome))
    for kind, path in files["bad"].items():
        with pytest.raises(BadImage, match=path.name):
            load_rgb(str(path))

    listed = 2 * GOOD_PER_CLASS + len(files["odd"]) + len(files["bad"])
    assert len(build_dataset(str(root), "train")) == listed  # each image once, the loop and the link notwithstanding

    # a real pretraining run with a DataLoader worker: every bad file skipped and counted, run finishes
    out = tmp_path / "skip"
    run = run_cli(tiny_args(root, out, "optim.epochs=1", "data.num_workers=1"))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["skipped_images"] == len(files["bad"]), summary
    unreadable = {Path(f["path"]).name: f["reason"] for f in summary["unreadable_files"]}
    for kind, path in files["bad"].items():
        assert path.name in run.stderr, f"skip of {path.name} not logged"
        assert unreadable.get(path.name), f"{path.name} not named in summary.json unreadable_files"
        rows.append((kind, path.name, f"skipped, logged, counted, in summary.json: {short(unreadable[path.name], 50)}"))
    left = {Path(f["path"]).name: f["reason"] for f in summary["left_out_files"]["files"]}
    for kind, path in files["left_out"].items():
        assert path.name in left, f"{path.name} not in summary.json left_out_files"
        assert path.name in run.stderr, f"{path.name} not logged"  # the listing names it
        rows.append((kind, path.name, f"left out, logged, in summary.json: {short(left[path.name], 70)}"))
    assert summary["left_out_files"]["count"] == len(files["left_out"])
    outcome = (f"finished; {listed} images listed once each; summary.json skipped_images="
               f"{summary['skipped_images']}, left_out_files.count={summary['left_out_files']['count']}")
    rows.append(("all of the above, one epoch", "", outcome))

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


def _bmp_tree(cifar: Path, root: Path, swap_val: bool = False) -> Path:
    """2 classes of CIFAR-10 as BMPs (a BMP's size depends only on its dimensions); ``swap_val`` puts each
    val image of one class under the names of the other: same layout, sizes and names, other pixels."""
    classes = ("airplane", "automobile")
    for split, n in (("train", 20), ("val", 10)):
        files = {c: sorted((cifar / split / c).iterdir())[:n] for c in classes}
        for i, cls in enumerate(classes):
            source = classes[1 - i] if swap_val and split == "val" else cls
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k, f in enumerate(files[source]):
                Image.open(f).convert("RGB").save(root / split / cls / f"{k:03d}.bmp")
    return root


def _same_times(src: Path, dst: Path) -> None:
    for f in src.rglob("*.bmp"):
        st = f.stat()
        os.utime(dst / f.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.reliability
def test_feature_cache_never_returns_features_of_other_images(cifar10_small, tmp_path, capfd):
    good = _checkpoint(cifar10_small, tmp_path / "ck")
    a = _bmp_tree(cifar10_small, tmp_path / "a")
    b = _bmp_tree(cifar10_small, tmp_path / "b", swap_val=True)
    _same_times(a, b)
    cache = tmp_path / "cache"

    def knn(data: Path, *extra: str) -> float:
        out = tmp_path / "out"
        argv = ["knn", "--checkpoint", str(good), "--data", str(data), "--num-workers", "0", "--k", "5",
                "--device", "cpu", "--output-dir", str(out), *extra]
        status, err = _cli(argv, capfd)
        assert status == 0, err
        return json.loads((out / "knn.json").read_text())["results"][0]["top1"]

    rows = []
    first = knn(a, "--feature-cache", str(cache))
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    again = knn(a, "--feature-cache", str(cache))
    assert again == first and {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == stamps  # hit: not rewritten
    rows.append(("unchanged data, second run", f"cache hit, top-1 {again:.1f} = first run {first:.1f}"))

    other, fresh = knn(b, "--feature-cache", str(cache)), knn(b, "--no-feature-cache")
    assert other == fresh and other != first
    rows.append(("other data, same names, sizes and mtimes",
                 f"recomputed: top-1 {other:.1f} = fresh {fresh:.1f} (not the cached {first:.1f})"))

    for f in sorted((a / "val" / "airplane").iterdir()):  # rewritten in place; size and mtime put back
        st = f.stat()
        f.write_bytes((b / "val" / "airplane" / f.name).read_bytes())
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    rewritten, fresh = knn(a, "--feature-cache", str(cache)), knn(a, "--no-feature-cache")
    assert rewritten == fresh and rewritten != first
    rows.append(("val images rewritten in place (same size, mtime)",
                 f"recomputed: top-1 {rewritten:.1f} = fresh {fresh:.1f} (not the cached {first:.1f})"))

    not_a_folder = tmp_path / "features.pt"
    not_a_folder.write_bytes(b"x")
    argv = ["knn", "--checkpoint", str(good), "--data", str(a), "--num-workers", "0", "--output-dir",
            str(tmp_path / "out"), "--feature-cache", str(not_a_folder)]
    line = _expect_error(argv, capfd, "--feature-cache", str(not_a_folder), "not a folder")
    rows.append(("--feature-cache names a file", short(line.replace(str(tmp_path), "$TMP"), 110)))

    names = [(str(a / "val" / "airplane" / "two\nlines.bmp"), 0), (str(a / "val" / "automobile" / " x.bmp"), 1)]
    subset = write_subset_file(tmp_path / "subset_odd.txt", names, [0, 1])
    assert read_subset_file(subset, names) == [0, 1] and len(subset.read_text().split("\n")) == 3
    rows.append(("subset_*.txt, a file name with a newline", "round trip exact (the name is a JSON-string line)"))
    record("drill 2c: feature cache and subset files", table(("input", "outcome"), rows))


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
    record("drill 2d: out-of-range options and files that are not checkpoints",
           table(("input", "command", "outcome"), rows))


@pytest.mark.reliability
def test_out_of_range_config_and_unsafe_yaml_give_one_line(cifar10_small, tmp_path, capfd):
    """Values that used to give a traceback (or a run that learns nothing) now fail before any compute."""
    rows = []
    out = tmp_path / "out"

    def case(kind: str, argv: list[str], *must_contain: str) -> None:
        line = _expect_error(argv, capfd, *must_contain)
        rows.append((kind, short(line.replace(str(tmp_path), "$TMP"), 150)))

    for override in ("optim.batch_size_per_gpu=0", "optim.batch_size_per_gpu=-4", "monitor.log_every=0",
                     "data.subset=-1", "optim.base_lr=-0.001", "optim.min_lr=-1e-6", "aug.global_scale=[0.9,0.3]",
                     "loss.teacher_temp=0", "optim.warmup_epochs=101"):
        key = override.split("=")[0]
        case(override, tiny_args(cifar10_small, out, override), f"'{key}'", "key=value overrides")

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [*a]\n")
    laughs = tmp_path / "laughs.yaml"
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    laughs.write_text("\n".join(lines) + "\n")
    for kind, path, text in (("non-UTF-8 YAML", latin1, "not UTF-8"), ("recursive YAML alias", loop, "recursive"),
                             ("billion laughs YAML (9^9 expanded)", laughs, "expands to more than")):
        case(kind, [*tiny_args(cifar10_small, out), "--config", str(path)], str(path), text)

    data = tmp_path / "data"  # a copy: the shared set must not be written to, whatever the code under test does
    shutil.copytree(cifar10_small, data)
    case("output_dir inside the data folder", tiny_args(data, data / "runs"),
         "inside the data folder", "choose an output_dir outside it")
    assert not (data / "runs").exists()
    assert not out.exists(), "a refused config created the output folder"
    record("drill 2e: out-of-range config values and unsafe YAML", table(("input", "outcome"), rows))
