"""Drill 2c: bad inputs to ``visualize`` and ``export`` give one ``error:`` line (exit 2), never a file.

Why in-process: these commands fail before any heavy work, so ``container_ssl.cli.main`` is run directly
(the same code path as the console script) and stderr is read back.
"""

from __future__ import annotations

import sys

import pytest

from container_ssl.cli import main as cli_main

from .figures import record, table
from .helpers import one_line_error, short


@pytest.mark.reliability
def test_visualize_and_export_bad_inputs_give_one_line(tmp_path, capfd, monkeypatch, write_trainer_checkpoint):
    rows = []
    ckpt = str(write_trainer_checkpoint(tmp_path / "run"))  # written by the trainer: its schema, its writer

    def case(kind: str, argv: list[str], *must_contain: str) -> None:
        capfd.readouterr()
        status = cli_main(argv)
        line = one_line_error(capfd.readouterr().err, status)
        for text in must_contain:
            assert text in line, f"{text!r} not in {line!r}"
        rows.append((kind, argv[0], short(line.replace(str(tmp_path), "$TMP"), 150)))

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    vis = ["visualize", "--checkpoint", ckpt, "--out", str(tmp_path / "vis"), "--images"]
    case("unreadable image", [*vis, str(broken)], str(broken), "cannot read image")
    case("missing image", [*vis, str(tmp_path / "nope.png")], "nope.png", "cannot read image")
    case("query outside the image", [*vis, str(broken), "--query", "1.5,0.5"], "--query", "between 0 and 1")
    case("threshold not a mass share", [*vis, str(broken), "--threshold", "60"], "--threshold", "between 0 and 1")

    occupied = tmp_path / "a_file"
    occupied.write_text("x")
    case("export folder is a file", ["export", "--checkpoint", ckpt, "--out", str(occupied / "sub")],
         "cannot create export folder")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    case("--onnx without the export extra", ["export", "--checkpoint", ckpt, "--out", str(tmp_path / "e"), "--onnx"],
         "onnxruntime", "pip install 'container-ssl[export]'")
    assert not (tmp_path / "vis").exists() or not any((tmp_path / "vis").iterdir())
    assert not (tmp_path / "e").exists()
    record("drill 2f: bad inputs to visualize and export", table(("input", "command", "outcome"), rows))
