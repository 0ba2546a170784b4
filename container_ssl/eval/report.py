"""``container-ssl report``: a Markdown table and PNG plots comparing pretraining runs side by side.

Why only JSON files: a report must be cheap and safe to regenerate anywhere (a laptop, a CI job) without
torch checkpoints or GPUs, so it reads what the runs and evaluators already wrote: ``summary.json`` and
``metrics.jsonl`` of each run, and ``eval/knn.json``, ``eval/linear.json``, ``eval/finetune_*.json``.
Anything missing or unreadable is shown as ``–`` (and listed under the table) instead of failing, since
reports are often made while some evaluations are still running.

Plots (matplotlib ``Figure`` objects on the Agg canvas, no display needed): kNN top-1 by ``k``, the online
kNN top-1, RankMe and the dynamic share alpha over pretraining epochs, and the pretraining loss over iterations.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..run import EVAL_DIR, FINETUNE_PREFIX, KNN_REPORT, LINEAR_REPORT, METRICS, SUMMARY

DASH = "–"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Compare pretraining runs: writes <out>/report.md (backbone, params, GMACs, epochs, "
                          "images/s, kNN, linear and finetune top-1) and PNG plots, from the runs' JSON files only.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="pretraining output folders")
    parser.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    parser.add_argument("--title", default="Pretraining runs", help="heading of report.md")


def run(args: argparse.Namespace) -> int:
    runs = [load_run(Path(p)) for p in args.runs]
    _unique_names(runs)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report folder {out}: {e.strerror or e}") from None
    plots = {
        "knn_by_k.png": plot_knn_by_k(runs, out / "knn_by_k.png"),
        "online_knn.png": plot_online_knn(runs, out / "online_knn.png"),
        "train_loss.png": plot_train_loss(runs, out / "train_loss.png"),
        "rank_knn.png": plot_rank_and_knn(runs, out / "rank_knn.png"),
        "alpha.png": plot_alpha(runs, out / "alpha.png"),
    }
    text = render_markdown(runs, plots, args.title)
    path = out / "report.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


@dataclass
class RunData:
    """What one run folder says about itself; empty fields mean the file was missing or unreadable."""

    path: Path
    name: str
    summary: dict = field(default_factory=dict)
    knn: dict = field(default_factory=dict)
    linear: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)  # tag -> report
    online_knn: list = field(default_factory=list)  # (epoch, k, top1)
    train_loss: list = field(default_factory=list)  # (iteration, loss)
    problems: list = field(default_factory=list)
    monitor: list = field(default_factory=list)  # "monitor" records: epoch, alpha, rankme, embed_std

    def knn_top1(self) -> dict[int, float]:
        return {int(r["k"]): float(r["top1"]) for r in self.knn.get("results", [])
                if isinstance(r, dict) and _is_number(r.get("top1")) and "k" in r}


def load_run(path: Path) -> RunData:
    """Read a run folder's JSON files; a missing folder is an error, missing files are not."""
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    run = RunData(path=path, name=path.resolve().name)
    run.summary = _read_json(path / SUMMARY, run)
    run.knn = _read_json(path / EVAL_DIR / KNN_REPORT, run)
    run.linear = _read_json(path / EVAL_DIR / LINEAR_REPORT, run)
    for f in sorted((path / EVAL_DIR).glob(f"{FINETUNE_PREFIX}*.json")):
        data = _read_json(f, run)
        if data:
            run.finetune[str(data.get("tag") or f.stem[len(FINETUNE_PREFIX):])] = data
    metrics = path / METRICS
    if metrics.is_file():
        bad = 0
        for line in metrics.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("type") == "knn" and _is_number(rec.get("top1")) and _is_number(rec.get("epoch")):
                run.online_knn.append((rec["epoch"], rec.get("k"), float(rec["top1"])))
            elif rec.get("type") == "train" and _is_number(rec.get("loss")) and _is_number(rec.get("iteration")):
                run.train_loss.append((rec["iteration"], float(rec["loss"])))
            elif rec.get("type") == "monitor" and _is_number(rec.get("epoch")):
                run.monitor.append(rec)
        if bad:
            run.problems.append(f"{metrics}: {bad} unreadable line(s) skipped")
    else:
        run.problems.append(f"{metrics} missing")
    return run


def render_markdown(runs: list[RunData], plots: dict[str, bool], title: str) -> str:
    """The comparison table, one column per run (runs side by side), then the plots and notes."""
    ks = sorted({k for r in runs for k in r.knn_top1()})
    tags = sorted({t for r in runs for t in r.finetune}, key=_tag_order)
    rows: list[tuple[str, list[str]]] = [
        ("backbone", [str(r.summary.get("model") or r.knn.get("model") or r.linear.get("model") or DASH)
                      for r in runs]),
        ("params (M)", [_fmt(r.summary.get("params"), scale=1e-6) for r in runs]),
        ("GMACs", [_fmt(r.summary.get("gmacs"), digits=3) for r in runs]),
        ("image size", [_fmt(r.summary.get("img_size"), digits=0) for r in runs]),
        ("epochs", [_fmt(r.summary.get("epochs"), digits=0) for r in runs]),
        ("pretraining images/s", [_fmt(r.summary.get("images_per_s"), digits=1) for r in runs]),
        ("pretraining time (h)", [_fmt(r.summary.get("wall_time_s"), scale=1 / 3600, digits=2) for r in runs]),
    ]
    for k in ks:
        rows.append((f"kNN top-1, k={k}", [_fmt(r.knn_top1().get(k)) for r in runs]))
    if not ks:
        rows.append(("kNN top-1", [DASH for _ in runs]))
    rows.append(("linear top-1", [_linear_cell(r.linear) for r in runs]))
    for tag in tags:
        rows.append((f"finetune top-1, {_tag_label(tag)} labels", [_fmt((r.finetune.get(tag) or {}).get("top1"))
                                                                  for r in runs]))
    if not tags:
        rows.append(("finetune top-1", [DASH for _ in runs]))

    header = ["", *[r.name for r in runs]]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    note = ("Accuracies in %. kNN: weighted k-NN of the frozen teacher (T from eval/knn.json); linear: val "
            "top-1 of the linear probe, its lr and epoch chosen as the brackets say (held-out = on a held-out "
            "part of train, val evaluated once; best on val = DINO's reporting, selected on the reported split); "
            "finetune: best val top-1 on the full val split.")
    lines += ["", note, ""]
    captions = {"knn_by_k.png": "kNN top-1 by k", "online_knn.png": "online kNN top-1 during pretraining",
                "train_loss.png": "pretraining loss",
                "rank_knn.png": "label-free RankMe against the online kNN",
                "alpha.png": "dynamic share alpha = sigmoid(m) per mixed block"}
    for name, caption in captions.items():
        body = f"![{caption}]({name})" if plots.get(name) else f"{DASH} (no data in these runs)"
        lines += [f"## {caption}", "", body, ""]
    lines += ["## Sources", ""]
    for r in runs:
        notes = "; ".join(r.problems) if r.problems else "all files present"
        lines.append(f"- **{r.name}**: `{r.path}` — {notes}")
    return "\n".join(lines) + "\n"


def plot_knn_by_k(runs: list[RunData], path: Path) -> bool:
    series = {r.name: sorted(r.knn_top1().items()) for r in runs if r.knn_top1()}
    if not series:
        return False
    fig, ax = _figure()
    for name, points in series.items():
        ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xscale("log")
    ks = sorted({k for pts in series.values() for k, _ in pts})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    return _save(fig, ax, path, "k (neighbours)", "kNN top-1 (%)", "kNN top-1 by k")


def plot_online_knn(runs: list[RunData], path: Path) -> bool:
    series = {}
    for r in runs:
        if r.online_knn:
            k = r.online_knn[-1][1]
            series[f"{r.name} (k={k})" if k is not None else r.name] = [(e + 1, v) for e, _, v in r.online_knn]
    return _plot_epochs(series, path, "online kNN top-1 (%)", "Online kNN during pretraining")


def plot_train_loss(runs: list[RunData], path: Path) -> bool:
    if not any(r.train_loss for r in runs):
        return False
    fig, ax = _figure()
    for r in runs:
        if not r.train_loss:
            continue
        xs, ys = zip(*sorted(r.train_loss))
        line, = ax.plot(xs, ys, alpha=0.3, linewidth=0.8)
        if len(ys) >= 10:
            smooth = _moving_average(ys, max(2, len(ys) // 20))
            ax.plot(xs, smooth, color=line.get_color(), linewidth=1.6, label=f"{r.name} (moving average)")
        else:
            line.set_alpha(1.0)
            line.set_label(r.name)
    return _save(fig, ax, path, "iteration", "DINO loss", "Pretraining loss")


def plot_rank_and_knn(runs: list[RunData], path: Path) -> bool:
    """RankMe (left axis, solid) and the online kNN top-1 (right axis, dashed) over epochs, per run.

    Why one plot: the effective rank needs no labels; drawn against the labelled kNN it shows whether it
    can stand in for it (both should rise together, and fall together when the representation collapses).
    """
    series = {r.name: sorted((m["epoch"] + 1, float(m["rankme"])) for m in r.monitor if _is_number(m.get("rankme")))
              for r in runs}
    if not any(series.values()):
        return False
    fig, ax = _figure()
    right = ax.twinx()
    for r in runs:
        if not series[r.name]:
            continue
        line, = ax.plot(*zip(*series[r.name]), marker="o", markersize=3, label=f"{r.name} RankMe")
        if r.online_knn:
            knn = sorted((e + 1, v) for e, _, v in r.online_knn)
            right.plot(*zip(*knn), marker="s", markersize=3, linestyle="--", color=line.get_color(),
                       label=f"{r.name} online kNN")
    right.set_ylabel("online kNN top-1 (%), dashed")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, ax, path, "pretraining epoch", "RankMe (effective rank), solid", "RankMe and online kNN",
                 handles=handles)


def plot_alpha(runs: list[RunData], path: Path) -> bool:
    """alpha = sigmoid(m) of every mixed block against the epoch, one line per (run, block)."""
    lines: dict[str, list] = {}
    for r in runs:
        for m in r.monitor:
            alpha = m.get("alpha")
            for block, value in (alpha.items() if isinstance(alpha, dict) else ()):
                if _is_number(value):
                    label = f"{r.name} {block}".replace(".mixer", "")
                    lines.setdefault(label, []).append((m["epoch"] + 1, float(value)))
    return _plot_epochs(lines, path, "alpha (share of attention)", "Dynamic affinity share")


def _plot_epochs(series: dict[str, list], path: Path, ylabel: str, title: str) -> bool:
    """One line per label over pretraining epochs (1-based: after epoch N); False, and no file, without data."""
    if not series:
        return False
    fig, ax = _figure()
    for label, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, ax, path, "pretraining epoch", ylabel, title)


def _figure():
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    return fig, fig.add_subplot()


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str, handles: list | None = None) -> bool:
    """Label and lay out the figure and write it; ``handles`` makes the legend (lines of a twin axis too)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=7 if handles else 8)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _read_json(path: Path, run: RunData) -> dict:
    if not path.is_file():
        run.problems.append(f"{path.relative_to(run.path)} missing")
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        run.problems.append(f"{path.relative_to(run.path)} unreadable ({type(e).__name__})")
        return {}
    if not isinstance(data, dict):
        run.problems.append(f"{path.relative_to(run.path)} is not a JSON object")
        return {}
    return data


def _unique_names(runs: list[RunData]) -> None:
    """Runs with the same folder name (``a/run``, ``b/run``) are told apart by their parent folder."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} ({seen[r.name]})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    if not _is_number(value):
        return DASH
    return f"{value * scale:.{digits}f}"


LINEAR_SELECTION = {"holdout": "held-out", "val": "best on val"}


def _linear_cell(linear: dict) -> str:
    """The linear top-1 and how its lr/epoch were chosen; files without ``selection`` predate the held-out
    protocol and reported the best val top-1."""
    if not _is_number(linear.get("top1")):
        return DASH
    selection = LINEAR_SELECTION.get(str(linear.get("selection") or "val"), str(linear.get("selection")))
    return f"{_fmt(linear['top1'])} ({selection})"


def _tag_order(tag: str) -> tuple:
    try:
        return (0, float(tag), tag)
    except ValueError:
        return (1, 0.0, tag)


def _tag_label(tag: str) -> str:
    try:
        return f"{float(tag) * 100:g}%"
    except ValueError:
        return tag

