"""``report`` reads the label-free monitor records and plots RankMe against the online kNN, and alpha."""

from __future__ import annotations

import argparse
import json

from PIL import Image

from container_ssl.eval import report


def _run(tmp_path, name: str, with_monitor: bool):
    run_dir = tmp_path / name
    run_dir.mkdir()
    lines = []
    for epoch in range(3):
        lines.append({"type": "knn", "epoch": epoch, "iteration": 10 * epoch, "k": 20, "top1": 20.0 + 5 * epoch})
        if with_monitor:
            lines.append({"type": "monitor", "epoch": epoch, "iteration": 10 * epoch, "rankme": 50.0 + epoch,
                          "embed_std": 0.9, "alpha": {"stages.3.blocks.0.mixer": 0.5 - 0.01 * epoch}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    return run_dir


def test_monitor_records_are_read_and_plotted(tmp_path):
    a, b = _run(tmp_path, "a", True), _run(tmp_path, "b", False)
    loaded = report.load_run(a)
    assert [m["rankme"] for m in loaded.monitor] == [50.0, 51.0, 52.0]
    assert [m["alpha"]["stages.3.blocks.0.mixer"] for m in loaded.monitor] == [0.5, 0.49, 0.48]
    assert report.load_run(b).monitor == []

    out = tmp_path / "report"
    assert report.run(argparse.Namespace(runs=[str(a), str(b)], out=str(out), title="t")) == 0
    for name in ("rank_knn.png", "alpha.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300
    text = (out / "report.md").read_text()
    assert "![label-free RankMe against the online kNN](rank_knn.png)" in text
    assert "(alpha.png)" in text


def test_runs_without_monitor_records_get_no_monitor_plots(tmp_path):
    runs = [report.load_run(_run(tmp_path, "old", False))]
    assert not report.plot_rank_and_knn(runs, tmp_path / "r.png")
    assert not report.plot_alpha(runs, tmp_path / "a.png")
    assert not (tmp_path / "r.png").exists()
