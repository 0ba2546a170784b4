"""DINO pretraining: the loop around :class:`container_ssl.ssl.dino.DINO` (student, EMA teacher, loss, step).

Why one function (:func:`pretrain`) with a config object: the same code path runs as a plain process,
under torchrun and inside a submitit SLURM job (see :mod:`container_ssl.distributed`), and the
resolved config saved next to the run is all that is needed to repeat it. The loop owns the data
(:mod:`.loader`), the schedules (whose values it passes to the step), logging, saving and resuming.
Everything it needs to continue exactly (weights, optimiser, scaler, loss centre, position in the epoch,
every RNG state) goes into ``checkpoint.pt``; a run started on a folder that holds one resumes from it, on
the same data only (the checkpoint records the training set's image count and a digest of its file list).
A run that learned nothing does not report success (:mod:`.health`). Ctrl-C (SIGINT), SIGTERM and the
wall-time budget ``max_minutes`` stop at the next step boundary and write ``checkpoint.pt`` there; a signal
exits 130 / 143 (a second one aborts at once).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from ..checkpoint import load_checkpoint, remove_stale_temps, save_atomic
from ..config import changed_keys, to_dict, to_yaml
from ..data import left_out_record
from ..distributed import (
    StopSignals,
    all_reduce_sum,
    init_distributed,
    max_over_ranks,
    peer_failure_line,
)
from ..errors import UserError
from ..run import CHECKPOINT, CONFIG, SUMMARY, load_strict
from . import health
from .dino import DINO
from .loader import (
    build_loader,
    check_not_inside_data,
    check_same_data,
    cpu_thread_tip,
    data_fingerprint,
    name_unreadable,
)
from .monitor import Monitors
from .optim import build_optimizer, set_lr_wd
from .run_log import Progress, RunLog, check_output_dir
from .schedules import Schedules, due
from .state import gather_rng_states, set_rng_state

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- loop
def pretrain(cfg: DictConfig, resume: Optional[str] = None, auto_resume: bool = True,
             stop_requested: Callable[[], bool] = lambda: False, allow_data_change: bool = False) -> dict[str, Any]:
    """Run (or continue) DINO pretraining as described by ``cfg``; returns the run summary.

    ``summary["stopped_by"]`` names the signal (SIGINT/SIGTERM) when one stopped the run at a step boundary.
    """
    try:
        trainer = DinoTrainer(cfg, resume=resume, auto_resume=auto_resume, allow_data_change=allow_data_change)
        return trainer.train(stop_requested)
    except RuntimeError as e:
        lost = peer_failure_line(e) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        if lost is None:
            raise
        # a dead or unreachable rank: one line naming this rank and how to go on, not a collective's traceback
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        ckpt = Path(cfg.output_dir) / CHECKPOINT
        where = f"the last checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
        raise UserError(f"rank {rank} of {world}: lost contact with another rank ({lost}); the run "
                        f"stopped, {where}; start the same command again (all ranks) to resume") from None


class DinoTrainer:
    """The loop of one run: data, schedules, logging, saving and resuming around a :class:`DINO`."""

    def __init__(self, cfg: DictConfig, resume: Optional[str] = None, auto_resume: bool = True,
                 allow_data_change: bool = False):
        self.cfg, self.allow_data_change = cfg, allow_data_change
        self.out = out = Path(cfg.output_dir)
        check_not_inside_data(out, cfg.data.path)
        self.info = info = init_distributed(cfg.device)
        if info.is_main:
            check_output_dir(out)
            remove_stale_temps(out)
        torch.manual_seed(cfg.seed + info.rank)
        self.dino = DINO(cfg, info.device, distributed=info.distributed, local_rank=info.local_rank)

        self.loader, self.sampler, self.gpu_aug = build_loader(cfg, info.device, info.rank, info.world_size)
        self.data_fingerprint = data_fingerprint(self.loader.dataset.dataset)
        self.data_root = Path(getattr(self.loader.dataset.dataset, "root", ""))
        tip = cpu_thread_tip(info.device, cfg.aug.backend, cfg.data.num_workers, os.environ)
        if tip and info.is_main:
            print(tip, flush=True)
        self.epochs, self.iters = cfg.optim.epochs, self.sampler.batches_per_epoch
        self.total_iters = self.epochs * self.iters
        self.sched = Schedules.for_run(cfg, self.iters, info.world_size)
        fused = info.device.type == "cuda"
        self.optimizer = build_optimizer(cfg.optim.optimizer, self.dino.param_groups(), fused=fused)
        self.stats = {"skipped_images": 0, "nan_steps_skipped": 0, "train_time_s": 0.0, "images_seen": 0}
        self.failure: str | None = None
        self.unreadable_files: list[dict[str, str]] = []  # named by this rank in this invocation
        self.stopped_by: str | None = None

        # the loop's clock, an attribute so the wall-time budget (max_minutes) can be tested without waiting
        self.clock: Callable[[], float] = time.perf_counter
        self.budget_reached = False
        self.start_epoch = self.start_batch = 0
        if resume or (auto_resume and (out / CHECKPOINT).is_file()):
            self._resume(Path(resume) if resume else out / CHECKPOINT)
        self.start_iteration = self.start_epoch * self.iters + self.start_batch
        if info.is_main:
            (out / CONFIG).write_text(to_yaml(cfg))
        self.run_log = RunLog(out, self.start_iteration, self.total_iters, self.epochs, info.is_main)
        self.monitors = Monitors(cfg, info, self.epochs, self.run_log)

    # ------------------------------------------------------------------------------------------ loop
    def train(self, stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        cfg, it, stopping, interrupted = self.cfg, self.start_iteration, False, False
        max_steps = min(cfg.max_steps or self.total_iters, self.total_iters)
        self.run_log.progress = Progress(self.total_iters, it)
        t_start = self.clock()
        trained = 0  # samples trained by this invocation, all ranks
        try:
            with StopSignals() as signals:
                for epoch in range(self.start_epoch, self.epochs):
                    if it >= max_steps or stopping:
                        break
                    over_budget, caught = self._stop_decision(signals, 0.0)
                    if over_budget or caught:
                        interrupted = caught
                        break
                    first = self.start_batch if epoch == self.start_epoch else 0
                    self.sampler.set_epoch(epoch, first)
                    self.dino.train()
                    batch, t0, images, unreadable = first, self.clock(), 0, 0
                    nan_before = self.stats["nan_steps_skipped"]
                    for views, _, skipped in self.loader:
                        self.stats["skipped_images"] += len(skipped)
                        unreadable += len(skipped)
                        name_unreadable(self.unreadable_files, skipped, self.data_root)
                        if views is not None:
                            images += self.train_step(views, epoch, it)
                        batch, it = batch + 1, it + 1
                        if it >= max_steps:
                            stopping = True
                            break
                        over_budget, caught = self._stop_decision(signals, self.clock() - t0)
                        if over_budget or caught or stop_requested():  # a signal: to be continued, not judged yet
                            stopping, interrupted = True, not over_budget
                            break
                        if cfg.checkpoint_every_steps and it % cfg.checkpoint_every_steps == 0 and batch < self.iters:
                            self.save(epoch, batch)
                    dt = self.clock() - t0
                    self.stats["train_time_s"] += dt
                    self.stats["images_seen"] += images * self.info.world_size
                    counts = all_reduce_sum(torch.tensor([images, unreadable], dtype=torch.int64,
                                                         device=self.info.device)).tolist()
                    trained += counts[0]
                    if batch == self.iters and counts[0] == 0:  # a whole epoch (or its resumed rest) trained nothing
                        nan_skipped = self.stats["nan_steps_skipped"] - nan_before
                        health.fail(health.nothing_trained(epoch, first, self.iters - first, len(self.loader.dataset),
                                                           counts[1], nan_skipped, cfg.data.path))
                    if batch < self.iters:  # stopped inside the epoch
                        self.save(epoch, batch)
                        break
                    self.run_log.write({"type": "epoch", "epoch": epoch, "iteration": it - 1,
                                        "images_per_s": images * self.info.world_size / max(dt, 1e-9),
                                        "epoch_time_s": dt, "skipped_images": self.stats["skipped_images"],
                                        "nan_steps_skipped": self.stats["nan_steps_skipped"]})
                    self.monitors.after_epoch(self.dino.teacher.backbone, epoch, it - 1)
                    self.save(epoch + 1, 0, periodic=due(cfg.checkpoint_every_epochs, epoch, self.epochs))
            if not interrupted and it > self.start_iteration:
                health.check_learned(it, it - self.start_iteration, trained, self.stats["skipped_images"],
                                     self.stats["nan_steps_skipped"])
        except health.LearnedNothing as e:
            self.failure = str(e)
            self.summary(self.clock() - t_start, finished=False, iteration=it)
            raise
        finally:
            self.run_log.close()
        if self.budget_reached and self.info.is_main:
            print(f"stopped by the wall-time budget (max_minutes={cfg.max_minutes}) at iteration {it} of "
                  f"{self.total_iters}; {self.out / CHECKPOINT} holds it: run again with a larger max_minutes "
                  "to continue", flush=True)
        if it >= self.total_iters:
            self.stopped_by = None  # the signal came during the last step: the run is complete all the same
        return self.summary(self.clock() - t_start, finished=it >= self.total_iters, iteration=it)

    def train_step(self, views: Any, epoch: int, it: int) -> int:
        """One DINO step with this iteration's schedule values, then the EMA; returns the images trained."""
        cfg = self.cfg
        if self.gpu_aug is not None:  # the batched back-end makes the crops on the device
            views = self.gpu_aug(views.to(self.info.device, non_blocking=True))
        else:
            views = [v.to(self.info.device, non_blocking=True) for v in views]
        if cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        set_lr_wd(self.optimizer, float(self.sched.lr[it]), float(self.sched.wd[it]))
        loss, stats, applied = self.dino.step(views, float(self.sched.teacher_temp[epoch]), self.optimizer,
                                              freeze_last_layer=epoch < cfg.optim.freeze_last_layer,
                                              undo_on_skip=cfg.on_nan == "skip-step")
        if not applied:
            self._on_non_finite(loss, stats, epoch, it)
            return 0
        momentum = float(self.sched.momentum[it])
        self.dino.update_teacher(momentum)
        n = views[0].shape[0]
        self.run_log.progress.add_images(n * self.info.world_size)
        if it == self.start_iteration and cfg.monitor.log_images:
            self.run_log.crops(views, cfg.aug.mean, cfg.aug.std, it)
        if (it + 1) % cfg.monitor.log_every == 0 or it + 1 == self.total_iters:
            self.run_log.step(epoch, it, {"loss": loss.detach(), "lr": self.sched.lr[it], "wd": self.sched.wd[it],
                                          "momentum": momentum, **{k: v for k, v in stats.items() if k != "loss"}})
        return n

    # ------------------------------------------------------------------------- stopping and failing
    def _stop_decision(self, signals: StopSignals, epoch_elapsed_s: float) -> tuple[bool, bool]:
        """(the training time of this and the resumed runs reached ``max_minutes``, a SIGINT/SIGTERM was caught),
        the same on every rank: one MAX all-reduce carries both. The budget wins over a signal in the same step."""
        m = self.cfg.max_minutes
        over = bool(m) and self.stats["train_time_s"] + epoch_elapsed_s >= m * 60.0
        signum, over = max_over_ranks([int(signals.received or 0), int(over)], self.info.device)
        self.budget_reached = self.budget_reached or bool(over)
        if signum and not over:
            self.stopped_by = signal.Signals(signum).name
        return bool(over), bool(signum) and not over

    def _on_non_finite(self, loss: torch.Tensor, stats: dict[str, Any], epoch: int, it: int) -> None:
        if self.cfg.on_nan != "skip-step":
            raise health.non_finite_loss(loss, stats, epoch, it, self.out / CHECKPOINT)
        self.stats["nan_steps_skipped"] += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.run_log.write({"type": "nan_skip", "epoch": epoch, "iteration": it, "loss": float(loss.detach())})
        if self.info.is_main:
            print(f"warning: non-finite loss at step {it + 1}; step skipped "
                  f"({self.stats['nan_steps_skipped']} so far)", flush=True)

    # ----------------------------------------------------------------------------------- checkpoints
    def save(self, epoch: int, batch_in_epoch: int, periodic: bool = False) -> None:
        """Write ``checkpoint.pt`` (and ``checkpoint_XXXX.pt`` when periodic) atomically, from rank 0."""
        if epoch >= self.epochs:
            epoch, batch_in_epoch = self.epochs, 0
        # rule (3): every rank holds the same parameters, so every rank takes this decision alike
        health.check_finite_weights({"student": self.dino.student, "teacher": self.dino.teacher},
                                    epoch * self.iters + batch_in_epoch, self.out / CHECKPOINT)
        rng = gather_rng_states()
        if not self.info.is_main:
            return
        nets, scaler = self.dino.state_dict(), self.dino.scaler
        state = {
            "config": to_dict(self.cfg), "student": nets["student"], "teacher": nets["teacher"],
            "optimizer": self.optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "loss": nets["loss"], "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "iteration": epoch * self.iters + batch_in_epoch, "rng": rng, "world_size": self.info.world_size,
            "stats": dict(self.stats), "data": dict(self.data_fingerprint),
        }
        save_atomic(state, self.out / CHECKPOINT)
        if periodic:
            save_atomic(state, self.out / f"checkpoint_{epoch:04d}.pt")

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        for key in ("student", "teacher", "optimizer", "loss", "epoch", "batch_in_epoch"):
            if key not in ckpt:
                raise UserError(f"checkpoint {path} has no '{key}' entry; it is not a container-ssl pretraining "
                                "checkpoint")
        d = self.dino
        for name, module in (("student", d.student), ("teacher", d.teacher)):
            load_strict(module, ckpt[name], path, f"this model ({name})", "use the config the run was started with")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if d.scaler is not None and ckpt.get("scaler"):
                d.scaler.load_state_dict(ckpt["scaler"])
            d.loss.load_state_dict(ckpt["loss"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"checkpoint {path}: optimiser/loss state does not fit this run ({first[:160]}); "
                            "use the config the run was started with") from None
        rng = ckpt.get("rng") or []
        if len(rng) == self.info.world_size:
            set_rng_state(rng[self.info.rank])
        elif self.info.is_main:
            log.warning("checkpoint was written by %d ranks, this run has %d: RNG streams restart from the seed",
                        len(rng), self.info.world_size)
        # after the weights: a checkpoint of another architecture gets the more specific shape message
        changed = changed_keys(ckpt["config"], to_dict(self.cfg)) if "config" in ckpt else []
        if changed:
            key, old, new = changed[0]
            more = f" and {len(changed) - 1} more key(s)" if len(changed) > 1 else ""
            raise UserError(f"{path} was written by a run with a different config ({key}: {old} -> {new}{more}); "
                            f"resuming would not continue that run: use a new output_dir, or pass --no-resume to "
                            f"start over")
        check_same_data(ckpt.get("data"), self.data_fingerprint, path, self.cfg.data.path, self.allow_data_change,
                        warn=self.info.is_main)
        self.start_epoch, self.start_batch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        self.stats.update(ckpt.get("stats", {}))
        if self.info.is_main:
            print(f"resumed from {path} at epoch {self.start_epoch + 1}, "
                  f"iteration {self.start_epoch * self.iters + self.start_batch}", flush=True)

    def summary(self, wall_time_s: float, finished: bool, iteration: int | None = None) -> dict[str, Any]:
        out = {
            "model": self.cfg.model.name, **self.dino.backbone_cost(self.cfg.aug.global_size),
            "img_size": self.cfg.aug.global_size, "epochs": self.epochs, "iterations": self.total_iters,
            "images_per_s": self.stats["images_seen"] / max(self.stats["train_time_s"], 1e-9),
            "wall_time_s": wall_time_s, "train_time_s": self.stats["train_time_s"], "finished": finished,
            "world_size": self.info.world_size, "skipped_images": self.stats["skipped_images"],
            "nan_steps_skipped": self.stats["nan_steps_skipped"], "iteration": iteration,
            "failure": self.failure, "stopped_by": self.stopped_by,
            "iterations_done": iteration, "epochs_done": None if iteration is None else iteration / self.iters,
            "budget_reached": self.budget_reached,
            "left_out_files": left_out_record(self.loader.dataset.dataset),  # by the listing, with reasons
            "unreadable_files": self.unreadable_files,  # failed to decode: this rank, this invocation
        }
        if self.info.is_main:
            (self.out / SUMMARY).write_text(json.dumps(out, indent=2))
        return out
