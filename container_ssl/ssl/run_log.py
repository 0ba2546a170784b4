"""What a run writes as it goes: metrics JSON lines, TensorBoard events, console progress (:class:`RunLog`
holds all three, on rank 0 only).

Why resume-aware: a run resumed from iteration ``i`` must neither lose nor repeat steps in its logs.
Metrics lines past the checkpoint (written after the last save, before the crash) are dropped, and
TensorBoard's ``purge_step`` hides the events past it, so curves continue as if never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..errors import UserError
from ..run import METRICS
from .augment import denormalize


def check_output_dir(path: Path) -> None:
    """Create ``path`` and make sure it is writable now, before any training time is spent."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output_dir {path} is not writable ({e.strerror or e}); choose another output_dir") from None


class Progress:
    """Console line: epoch, iteration, loss, images/s (smoothed) and ETA."""

    def __init__(self, total_iterations: int, start_iteration: int, stream=None):
        # None = the sys.stdout of the moment: a default bound at import would keep writing to whatever
        # stdout was then (e.g. a redirected, since closed, log file of an earlier in-process run)
        self.total, self.stream = total_iterations, stream
        self.t0, self.it0 = time.perf_counter(), start_iteration
        self.images = 0

    def add_images(self, n: int) -> None:
        self.images += n

    def images_per_s(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.images / dt if dt > 0 else 0.0

    def line(self, epoch: int, epochs: int, iteration: int, values: dict[str, float]) -> str:
        done = iteration + 1 - self.it0
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - iteration - 1)
        parts = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        text = (f"epoch {epoch + 1}/{epochs} it {iteration + 1}/{self.total} {parts} "
                f"img/s {self.images_per_s():.1f} eta {_hms(eta)}")
        print(text, file=self.stream or sys.stdout, flush=True)
        return text


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLog:
    """A run's metrics lines, TensorBoard events and console line, written by rank 0 only (``is_main``).

    On resume from ``start_iteration`` (0 for a fresh start: that drops the lines of a run killed before
    its first save) the logs continue where the checkpoint is: metrics lines with a later ``iteration`` are
    dropped and TensorBoard purges its later events.
    """

    def __init__(self, out: Path, start_iteration: int, total_iterations: int, epochs: int, is_main: bool) -> None:
        self.epochs, self.total = epochs, total_iterations
        self.metrics: TextIO | None = None
        self.tb: Any = None  # a SummaryWriter on rank 0
        if is_main:
            path = out / METRICS
            if path.is_file():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and _iteration(line) < start_iteration]
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                tmp.replace(path)
            self.metrics = open(path, "a", buffering=1)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out / "tb"), purge_step=start_iteration)
        self.progress = Progress(total_iterations, start_iteration)

    def write(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record, allow_nan=True) + "\n")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars (rank 0)."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def step(self, epoch: int, iteration: int, values: dict[str, Any]) -> None:
        """One ``train`` line, its TensorBoard scalars and the console line. ``values`` (at least loss and lr)
        may be 0-dim tensors: they become floats here, on every rank (a device sync, as a loss print is)."""
        values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) or hasattr(v, "item")}
        if self.metrics is None:
            return
        self.write({"type": "train", "epoch": epoch, "iteration": iteration, **values,
                    "images_per_s": self.progress.images_per_s()})
        self.scalars({f"train/{k}": v for k, v in values.items()}, iteration)
        self.progress.line(epoch, self.epochs, iteration, {"loss": values["loss"], "lr": values["lr"]})

    def crops(self, views: list, mean: Any, std: Any, iteration: int) -> None:
        """The first 8 images of the first 3 crop batches, denormalised, to TensorBoard."""
        if self.tb is None:
            return
        for i, v in enumerate(views[: min(len(views), 3)]):
            images = denormalize(v[:8].detach().float().cpu(), mean, std).clamp(0, 1)
            self.tb.add_images(f"crops/view{i}", images, iteration)

    def close(self) -> None:
        for sink in (self.metrics, self.tb):
            if sink is not None:
                sink.close()


def _iteration(line: str) -> float:
    try:
        return float(json.loads(line).get("iteration", -1))
    except ValueError:
        return math.inf
