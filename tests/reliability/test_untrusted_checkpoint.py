"""Drill 4: a checkpoint that would run code when unpickled is refused by every loader, and runs nothing.

Why: checkpoints are downloaded and shared; ``torch.load`` without ``weights_only=True`` executes whatever
a pickle says. The payload here writes a marker file; the drill first proves it is live (a plain unpickle
runs it), then feeds it to every way the package reads a ``.pt`` file. A static scan keeps new code from
reintroducing an unsafe load.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch

import container_ssl
from container_ssl.checkpoint import load_checkpoint
from container_ssl.cli import main as cli_main
from container_ssl.errors import UserError
from container_ssl.eval.features import cached_features
from container_ssl.models import create_backbone
from container_ssl.models.loading import load_released_container_light

from .figures import record, table
from .helpers import one_line_error, short, tiny_args

PACKAGE = Path(container_ssl.__file__).resolve().parent


class RunsCode:
    """Unpickling this calls ``exec``: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


class _Images(torch.utils.data.Dataset):
    """A tiny labelled image set for the feature cache."""

    def __init__(self) -> None:
        self.samples = [(f"img{i}.png", i % 2) for i in range(4)]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.full((3, 32, 32), float(i)), i % 2


@pytest.mark.reliability
def test_code_running_pickle_is_refused_everywhere(cifar10_small, tmp_path, capfd):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"config": {"model": {"name": "container_light_nano"}}, "teacher": RunsCode(marker),
                "student": {}, "epoch": 1}, evil)
    torch.load(evil, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.is_file()
    marker.unlink()
    rows = []

    def refused(loader: str, outcome: str) -> None:
        assert not marker.exists(), f"{loader} ran the pickle's code"
        assert "refused to load" in outcome and str(evil) in outcome, outcome
        rows.append((loader, "refused, nothing ran", short(outcome.replace(str(tmp_path), "$TMP"), 110)))

    with pytest.raises(UserError) as e:
        load_checkpoint(evil)
    refused("checkpoint.load_checkpoint", str(e.value))
    with pytest.raises(UserError) as e:
        load_released_container_light(create_backbone("container_light_nano"), evil)
    refused("models.loading.load_released_container_light", str(e.value))

    out = str(tmp_path / "out")
    commands = {
        "pretrain --resume": [*tiny_args(cifar10_small, out, "data.subset=32"), "--resume", str(evil)],
        "knn --checkpoint": ["knn", "--checkpoint", str(evil), "--output-dir", out],
        "linear --checkpoint": ["linear", "--checkpoint", str(evil), "--output-dir", out],
        "finetune --checkpoint": ["finetune", "--checkpoint", str(evil), "--output-dir", out],
        "finetune --init scratch --checkpoint": ["finetune", "--init", "scratch", "--checkpoint", str(evil),
                                                 "--output-dir", out],
    }
    for name, argv in commands.items():
        capfd.readouterr()
        status = cli_main(argv)
        refused(f"container-ssl {name}", one_line_error(capfd.readouterr().err, status))

    # the feature cache: a cache file is never trusted; a poisoned one is recomputed and replaced
    model, cache = create_backbone("container_light_nano", img_size=32, num_classes=0), tmp_path / "cache"
    info = {"sha256": "ab" * 32, "checkpoint": "weights.pt", "format": "timm", "model": "container_light_nano"}
    feats, _ = cached_features(model, info, _Images(), cache, batch_size=4, num_workers=0, use_amp=False)
    (cached,) = cache.glob("*.pt")
    torch.save({"features": RunsCode(marker), "labels": torch.zeros(4), "meta": {"sha256": info["sha256"]}}, cached)
    again, _ = cached_features(model, info, _Images(), cache, batch_size=4, num_workers=0, use_amp=False)
    assert not marker.exists(), "the feature cache ran the pickle's code"
    assert torch.equal(feats, again) and "features" in load_checkpoint(cached)  # recomputed, file replaced
    rows.append(("eval.features.cached_features", "refused, nothing ran", "poisoned cache file recomputed and replaced"))
    record("drill 4: untrusted checkpoint (pickle that runs code)", table(("loader", "result", "message"), rows))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


UNSAFE_CALLS = ("pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
                "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open")
NEEDS_WEIGHTS_ONLY = ("torch.load", "serialization.load", "load_state_dict_from_url", "hub.load")


def unsafe_loads(root: Path) -> list[str]:
    """``file:line call`` for every load in ``root`` that could unpickle arbitrary objects."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cloudpickle", "dill", "marshal"):
                found += [f"{where} from {node.module} import {a.name}" for a in node.names if "load" in a.name
                          or a.name == "Unpickler"]
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name.endswith(UNSAFE_CALLS):
                found.append(f"{where} {name}(...)")
            elif name.endswith(NEEDS_WEIGHTS_ONLY) and not _keyword_is(node, "weights_only", True):
                found.append(f"{where} {name}(...) without weights_only=True")
            elif name.endswith(("np.load", "numpy.load")) and _keyword_is(node, "allow_pickle", True):
                found.append(f"{where} {name}(..., allow_pickle=True)")
    return found


def test_package_has_no_unsafe_loads(tmp_path):
    # the scanner catches what it should, and only that
    probe = tmp_path / "pkg" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("import torch, pickle\nfrom pickle import load\ntorch.load(f)\n"
                     "torch.load(f, weights_only=False)\npickle.loads(b)\ntorch.load(f, weights_only=True)\n")
    assert [x.split(" ", 1)[0] for x in unsafe_loads(probe.parent)] == [f"pkg/probe.py:{n}" for n in (2, 3, 4, 5)]

    found = unsafe_loads(PACKAGE)
    record("drill 4b: static scan", f"torch.load without weights_only=True / pickle loads in container_ssl/: "
                                    f"{len(found)}")
    assert not found, "unsafe deserialisation in the package:\n" + "\n".join(found)


@pytest.mark.reliability
def test_damaged_or_foreign_files_are_not_called_code(tmp_path, capfd):
    """"Could run code" is kept for a real torch file that names disallowed objects; a file that is not a
    checkpoint at all, or one cut short, says so (a user then looks for a bad copy, not for malware)."""
    good = tmp_path / "good.pt"
    torch.save({"teacher": {"w": torch.zeros(64)}, "epoch": 1}, good)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "random bytes named checkpoint.pt": (random.Random(2).randbytes(1 << 14), "is not a PyTorch checkpoint"),
        "a text file": (b"epoch,loss\n1,2.5\n", "is not a PyTorch checkpoint"),
        "an empty file": (b"", "is empty (0 bytes)"),
        "a zip checkpoint cut in half": (good.read_bytes()[: good.stat().st_size // 2], "unreadable or truncated"),
        "a legacy checkpoint cut in half": (legacy.read_bytes()[: legacy.stat().st_size // 2],
                                            "unreadable or truncated"),
    }
    rows = []
    for kind, (data, expected) in files.items():
        path = tmp_path / kind.replace(" ", "_") / "checkpoint.pt"
        path.parent.mkdir()
        path.write_bytes(data)
        line = _knn_error(path, tmp_path, capfd)
        assert expected in line and str(path) in line and "could run code" not in line, line
        rows.append((kind, short(line.replace(str(tmp_path), "$TMP"), 120)))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"teacher": {"w": torch.zeros(2)}, "when": __import__("datetime").date(2020, 1, 1)}, unsafe)
    line = _knn_error(unsafe, tmp_path, capfd)
    assert "could run code" in line and "datetime.date" in line, line
    rows.append(("a torch file naming datetime.date", short(line.replace(str(tmp_path), "$TMP"), 120)))
    record("drill 4e: files that are not checkpoints vs pickles that could run code",
           table(("file", "knn says"), rows))


def _knn_error(path: Path, tmp_path: Path, capfd) -> str:
    capfd.readouterr()
    status = cli_main(["knn", "--checkpoint", str(path), "--output-dir", str(tmp_path / "out")])
    return one_line_error(capfd.readouterr().err, status)
