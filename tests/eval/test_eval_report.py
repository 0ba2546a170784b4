"""The report reads only JSON files, shows missing ones as '–', and draws its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import write_run_files

from container_ssl.cli import main
from container_ssl.errors import UserError
from container_ssl.eval.report import load_run, render_markdown


def write_evals(run_dir: Path, knn: dict, linear: float | None, finetune: dict, selection: str | None = None) -> None:
    ev = run_dir / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    (ev / "knn.json").write_text(json.dumps({"model": "x", "temperature": 0.07,
                                             "results": [{"k": k, "k_used": k, "top1": v, "top5": None}
                                                         for k, v in knn.items()]}))
    if linear is not None:
        (ev / "linear.json").write_text(json.dumps({"top1": linear, **({"selection": selection} if selection else {})}))
    for tag, top1 in finetune.items():
        (ev / f"finetune_{tag}.json").write_text(json.dumps({"tag": tag, "top1": top1}))
        (ev / f"finetune_{tag}_log.jsonl").write_text("{}\n")  # must not be taken for a report


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    a, b, c = tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"
    write_run_files(a, epochs=4, loss0=9.0)
    write_evals(a, {10: 41.5, 20: 42.25, 200: 40.0}, 55.5, {"0.1": 61.0, "0.01": 33.3})
    write_run_files(b, epochs=2, loss0=8.0)
    write_evals(b, {20: 38.0}, 51.25, {"0.1": 58.0}, selection="holdout")
    c.mkdir()
    (c / "summary.json").write_text("{not json")
    (c / "metrics.jsonl").write_text('{"type": "train", "iteration": 0, "loss": 5.0}\ngarbage\n')
    return [a, b, c]


def test_table_side_by_side(runs, tmp_path):
    out = tmp_path / "out"
    assert main(["report", *map(str, runs), "--out", str(out), "--title", "CIFAR-10"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# CIFAR-10")
    assert "|  | a/run | b/run | c |" in text  # same folder names told apart by their parent
    assert "| backbone | container_light_nano | container_light_nano | – |" in text
    assert "| params (M) | 0.31 | 0.31 | – |" in text
    assert "| pretraining images/s | 812.5 | 812.5 | – |" in text
    assert "| kNN top-1, k=10 | 41.50 | – | – |" in text and "| kNN top-1, k=20 | 42.25 | 38.00 | – |" in text
    # how the lr/epoch were chosen stands next to the figure; a file without it predates the held-out protocol
    assert "| linear top-1 | 55.50 (best on val) | 51.25 (held-out) | – |" in text
    lines = text.splitlines()
    ft = [line for line in lines if line.startswith("| finetune")]
    assert ft == ["| finetune top-1, 1% labels | 33.30 | – | – |", "| finetune top-1, 10% labels | 61.00 | 58.00 | – |"]
    assert "summary.json unreadable" in text and "1 unreadable line(s) skipped" in text
    for name in ("knn_by_k.png", "online_knn.png", "train_loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text


def test_empty_runs_have_no_plots(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = load_run(empty)
    text = render_markdown([run], {}, "t")
    assert "| kNN top-1 | – |" in text and "| linear top-1 | – |" in text and "no data" in text
    assert main(["report", str(empty), "--out", str(tmp_path / "o")]) == 0
    assert not list((tmp_path / "o").glob("*.png"))


def test_missing_run_folder(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        load_run(tmp_path / "nope")
