"""DINO pretraining: a student and an EMA teacher trained with the multi-crop DINO loss.

Why one function (:func:`pretrain`) with a config object: the same code path runs as a plain process,
under torchrun and inside a submitit SLURM job (see :mod:`container_ssl.distributed`), and the
resolved config saved next to the run is all that is needed to repeat it. Everything the loop needs to
continue exactly (weights, optimiser, scaler, loss centre, position in the epoch, every RNG state) goes
into ``checkpoint.pt``; a run started on a folder that holds one resumes from it, on the same data only
(the checkpoint records the training set's image count and a digest of its file list).

A run that learned nothing does not report success. It stops with a one-line error, ``finished: false`` and
the reason in ``summary.json`` when (1) an epoch trained zero samples (every image unreadable, or every step
skipped for a non-finite loss): the epoch's checkpoint is not written; (2) more than half of the steps run so
far were skipped by ``--on-nan skip-step``: checked when the loop ends; (3) the weights about to be saved
are not finite: the previous checkpoint stays. Ctrl-C (SIGINT) and SIGTERM stop at the next step
boundary, write ``checkpoint.pt`` there and exit 130 / 143 (a second signal aborts at once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from ..checkpoint import load_checkpoint, remove_stale_temps, save_atomic
from ..config import AugBackend, changed_keys, to_dict, to_yaml
from ..data import Skipped, build_dataset, left_out_record
from ..distributed import (
    DistInfo,
    StopSignals,
    all_reduce_sum,
    init_distributed,
    max_over_ranks,
)
from ..errors import UserError
from ..models import DINOHead, create_backbone
from ..models.affinity_probe import mix_weights
from ..models.complexity import count_macs
from . import optim as dino_optim
from .augment import MultiCropTransform, denormalize
from .ema import update_teacher
from .loss import DINOLoss
from .monitor import label_free, online_knn
from .multicrop import MultiCropWrapper
from .run_log import MetricsLog, Progress, TensorBoard
from .sampling import ResumableSampler, SeededViews
from .schedules import cosine_schedule
from .state import gather_rng_states, set_rng_state

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class NonFiniteLoss(UserError):
    """The loss became NaN/inf; the message gives the step, the loss terms and the last good checkpoint."""


class LearnedNothing(UserError):
    """The run trained no samples in an epoch, skipped most steps, or ended with non-finite weights."""


MAX_NAMED_UNREADABLE = 1000  # summary.json names at most this many unreadable files (all are counted)
MAX_SKIPPED_FRACTION = 0.5  # more than half of the steps skipped for a non-finite loss: the run failed


# ------------------------------------------------------------------------------------ building parts
def build_models(cfg: DictConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and teacher (without), starting from the same weights."""
    m = cfg.model

    def make(drop_path: float) -> MultiCropWrapper:
        backbone = create_backbone(m.name, img_size=m.img_size, patch_size=m.patch_size, drop_path_rate=drop_path)
        head = DINOHead(backbone.num_features, out_dim=m.out_dim, use_bn=m.use_bn_in_head,
                        norm_last_layer=m.norm_last_layer, hidden_dim=m.hidden_dim, bottleneck_dim=m.bottleneck_dim)
        return MultiCropWrapper(backbone, head)

    student, teacher = make(m.drop_path_rate), make(0.0)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def collate_views(batch: list) -> tuple[Any, Any, list[Skipped]]:
    """(views, labels, the skipped unreadable images); views is a list of crop batches.

    A dataset built without ``name_skips`` marks a skipped image as ``None``: it is counted without a name.
    """
    skipped = [b if b is not None else Skipped("", "unreadable") for b in batch
               if b is None or isinstance(b, Skipped)]
    kept = [b for b in batch if b is not None and not isinstance(b, Skipped)]
    if not kept:
        return None, None, skipped
    views, labels = default_collate(kept)
    return views, labels, skipped


def build_augmentation(aug_cfg: Any, device: torch.device) -> tuple[Callable, nn.Module | None]:
    """(per-image transform run in the loader, batched augmentation run on ``device`` or None).

    The CPU back-end makes every crop per image in the loader workers; the GPU back-end only draws the crop
    boxes and resizes there, and makes all crops of a batch at once on the training device (which may be
    the CPU).
    """
    if AugBackend(aug_cfg.backend) is AugBackend.cpu:
        return MultiCropTransform(aug_cfg), None
    # AugBackend.gpu; kornia is imported only when the batched back-end is used
    from .augment_gpu import BoxAndResize, KorniaMultiCrop
    return BoxAndResize(aug_cfg), KorniaMultiCrop(aug_cfg).to(device)


def build_loader(cfg: DictConfig, info: DistInfo) -> tuple[DataLoader, ResumableSampler, Optional[nn.Module]]:
    """Train loader yielding multi-crop views (CPU back-end) or base-size uint8 images (GPU back-end)."""
    transform, gpu_aug = build_augmentation(cfg.aug, info.device)
    data = build_dataset(cfg.data.path, cfg.data.train_split, cache_dir=cfg.data.cache_dir,
                         on_bad_image=cfg.data.on_bad_image, limit=cfg.data.subset, seed=cfg.seed, name_skips=True)
    views = SeededViews(data, seed=cfg.seed, transform=transform)
    sampler = ResumableSampler(len(views), cfg.optim.batch_size_per_gpu, seed=cfg.seed,
                               rank=info.rank, world_size=info.world_size)
    workers = cfg.data.num_workers
    loader = DataLoader(views, batch_size=cfg.optim.batch_size_per_gpu, sampler=sampler, num_workers=workers,
                        collate_fn=collate_views, pin_memory=info.device.type == "cuda", drop_last=False,
                        persistent_workers=workers > 0, generator=torch.Generator(),
                        prefetch_factor=4 if workers > 0 else None)
    return loader, sampler, gpu_aug


def cpu_thread_tip(device: torch.device, aug_backend: str, num_workers: int,
                   env: Mapping[str, str]) -> str | None:
    """A one-line tip when CPU training shares its cores with per-image augmentation in loader workers.

    Why: OpenMP's default (active) wait keeps the training threads spinning between parallel regions, so a
    loader worker on the same cores is starved and the whole step waits for it. On 2 cores the quick CIFAR-10
    recipe ran at ~124 images/s that way, ~147 with ``OMP_WAIT_POLICY=PASSIVE`` (which must be set before
    Python starts, so the trainer can only say so), and ~180 with the batched kornia back-end
    (``aug.backend=gpu``, which runs on the training device), where the workers only decode.
    """
    if device.type != "cpu" or aug_backend != "cpu" or num_workers <= 0 or "OMP_WAIT_POLICY" in env:
        return None
    return ("tip: on a CPU, aug.backend=gpu (batched augmentation in the training process) or "
            "OMP_WAIT_POLICY=PASSIVE in the environment keeps the loader workers from starving the training threads")


def amp_context(cfg: DictConfig, device: torch.device) -> tuple[Callable[[], Any], Optional[torch.amp.GradScaler]]:
    mode = cfg.optim.amp  # an AmpMode: the config refused any other value
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    if mode == "none":
        return nullcontext, None
    if mode == "fp16" and device.type != "cuda":
        raise UserError("optim.amp=fp16 needs a GPU; use bf16 or none on the CPU")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output_dir {path} is not writable ({e.strerror or e}); choose another output_dir") from None


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
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not _peer_failure(e):
            raise
        # a dead or unreachable rank: one line naming this rank and how to go on, not a collective's traceback
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        ckpt = Path(cfg.output_dir) / CHECKPOINT
        where = f"the last checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
        raise UserError(f"rank {rank} of {world}: lost contact with another rank ({_first_line(e)}); the run "
                        f"stopped, {where}; start the same command again (all ranks) to resume") from None


_PEER_FAILURE_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                         "timeout", "gloo", "nccl", "processgroup", "c10d", "socket")


def _peer_failure(e: BaseException) -> bool:
    """True for errors of torch.distributed collectives (a peer rank died, hung or became unreachable)."""
    return isinstance(e, dist.DistError) or any(m in str(e).lower() for m in _PEER_FAILURE_MARKERS)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if line.startswith("[") and "] " in line:  # drop gloo's "[.../pair.cc:561] " source location
        line = line.split("] ", 1)[1]
    return line.split(". ", 1)[0][:160]


class DinoTrainer:
    """Holds the student, teacher, optimiser, loss and schedules of one run, and runs its loop."""

    def __init__(self, cfg: DictConfig, resume: Optional[str] = None, auto_resume: bool = True,
                 allow_data_change: bool = False):
        self.cfg = cfg
        self.allow_data_change = allow_data_change
        self.out = out = Path(cfg.output_dir)
        check_not_inside_data(out, cfg.data.path)
        self.info = info = init_distributed(cfg.device)
        if info.is_main:
            check_output_dir(out)
            remove_stale_temps(out)
        torch.manual_seed(cfg.seed + info.rank)

        student, teacher = build_models(cfg)
        if info.distributed and info.device.type == "cuda" and _has_batchnorm(student):
            # batch statistics over the global batch (torch supports SyncBatchNorm on GPUs only;
            # CPU/gloo runs keep per-rank statistics)
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.student = student.to(info.device, memory_format=fmt)
        self.teacher = teacher.to(info.device, memory_format=fmt)
        if cfg.compile:  # in place: state_dict keys stay those of the eager model
            self.student.backbone.compile()
            self.teacher.backbone.compile()
        self.student_ddp: nn.Module = student
        if info.distributed:
            ids = [info.local_rank] if info.device.type == "cuda" else None
            self.student_ddp = DistributedDataParallel(student, device_ids=ids)
            # DDP has broadcast rank 0's student; each rank's teacher is still a copy of its own (differently
            # seeded) student. Start every teacher from the shared weights, or the ranks' teachers differ for
            # the whole run and a resume (which loads rank 0's teacher everywhere) is not exact.
            self.teacher.load_state_dict(self.student.state_dict())

        self.loader, self.sampler, self.gpu_aug = build_loader(cfg, info)
        self.data_fingerprint = data_fingerprint(self.loader.dataset.dataset)
        tip = cpu_thread_tip(info.device, cfg.aug.backend, cfg.data.num_workers, os.environ)
        if tip and info.is_main:
            print(tip, flush=True)
        o, lc = cfg.optim, cfg.loss
        self.epochs, self.iters = o.epochs, self.sampler.batches_per_epoch
        self.total_iters = self.epochs * self.iters
        global_batch = o.batch_size_per_gpu * info.world_size
        self.lr_sched = cosine_schedule(o.base_lr * global_batch / 256.0, o.min_lr, self.epochs, self.iters,
                                        warmup_epochs=o.warmup_epochs)
        self.wd_sched = cosine_schedule(o.weight_decay, o.weight_decay_end, self.epochs, self.iters)
        self.m_sched = cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, self.epochs, self.iters)

        no_decay = getattr(student.backbone, "no_weight_decay", lambda: set())()
        self.optimizer = dino_optim.build_optimizer(o.optimizer, dino_optim.param_groups(student, no_decay),
                                                    fused=info.device.type == "cuda")
        self.loss_fn = DINOLoss(cfg.model.out_dim, 2 + cfg.aug.n_local, lc.warmup_teacher_temp, lc.teacher_temp,
                                lc.warmup_teacher_temp_epochs, self.epochs, lc.student_temp,
                                lc.center_momentum).to(info.device)
        self.autocast, self.scaler = amp_context(cfg, info.device)
        self.stats = {"skipped_images": 0, "nan_steps_skipped": 0, "train_time_s": 0.0, "images_seen": 0}
        self.failure: str | None = None
        self.unreadable_files: list[dict[str, str]] = []  # named by this rank in this invocation
        self.stopped_by: str | None = None

        # the loop's clock, an attribute so the wall-time budget (max_minutes) can be tested without waiting
        self.clock: Callable[[], float] = time.perf_counter
        self.budget_reached = False
        self.start_epoch = self.start_batch = 0
        self.resumed_from: Optional[Path] = None
        ckpt_path = Path(resume) if resume else None
        if ckpt_path is None and auto_resume and (out / CHECKPOINT).is_file():
            ckpt_path = out / CHECKPOINT
        if ckpt_path is not None:
            self._resume(ckpt_path)
        self.start_iteration = self.start_epoch * self.iters + self.start_batch
        self.progress = Progress(self.total_iters, self.start_iteration)

        self.metrics = self.tb = None
        if info.is_main:
            (out / "config.yaml").write_text(to_yaml(cfg))
            purge = self.start_iteration  # also 0 for a fresh start: drop lines of a run killed before its first save
            self.metrics = MetricsLog(out / "metrics.jsonl", resume_iteration=purge)
            self.tb = TensorBoard(out / "tb", purge_step=purge)

    # ------------------------------------------------------------------------------------------ loop
    def train(self, stop_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        cfg, it, stopping, interrupted = self.cfg, self.start_iteration, False, False
        max_steps = min(cfg.max_steps or self.total_iters, self.total_iters)
        self.progress = Progress(self.total_iters, it)
        t_start = self.clock()
        trained = 0  # samples trained by this invocation, all ranks
        try:
            with StopSignals() as signals:
                for epoch in range(self.start_epoch, self.epochs):
                    if it >= max_steps or stopping or self._over_budget(0.0):
                        break
                    if self._signal_stop(signals):
                        interrupted = True
                        break
                    first = self.start_batch if epoch == self.start_epoch else 0
                    self.sampler.set_epoch(epoch, first)
                    self.student.train()
                    self.teacher.train()
                    batch, t0, images, unreadable = first, self.clock(), 0, 0
                    nan_before = self.stats["nan_steps_skipped"]
                    for views, _, skipped in self.loader:
                        self.stats["skipped_images"] += len(skipped)
                        unreadable += len(skipped)
                        self._name_unreadable(skipped)
                        if views is not None:
                            images += self.train_step(views, epoch, it)
                        batch, it = batch + 1, it + 1
                        if it >= max_steps or self._over_budget(self.clock() - t0):
                            stopping = True
                            break
                        if self._signal_stop(signals) or stop_requested():  # to be continued: not judged yet
                            stopping = interrupted = True
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
                        self._fail(self._nothing_trained(epoch, first, counts[1],
                                                         self.stats["nan_steps_skipped"] - nan_before))
                    if batch < self.iters:  # stopped inside the epoch
                        self.save(epoch, batch)
                        break
                    self._log({"type": "epoch", "epoch": epoch, "iteration": it - 1,
                               "images_per_s": images * self.info.world_size / max(dt, 1e-9), "epoch_time_s": dt,
                               "skipped_images": self.stats["skipped_images"],
                               "nan_steps_skipped": self.stats["nan_steps_skipped"]})
                    self.monitor(epoch, it - 1)
                    self.monitor_label_free(epoch, it - 1)
                    self.save(epoch + 1, 0, periodic=_periodic(epoch, cfg, self.epochs))
            if not interrupted and it > self.start_iteration:
                self._check_learned(it, trained)
        except LearnedNothing as e:
            self.failure = str(e)
            self.summary(self.clock() - t_start, finished=False, iteration=it)
            raise
        finally:
            for sink in (self.metrics, self.tb):
                if sink is not None:
                    sink.close()
        if self.budget_reached and self.info.is_main:
            print(f"stopped by the wall-time budget (max_minutes={cfg.max_minutes}) at iteration {it} of "
                  f"{self.total_iters}; {self.out / CHECKPOINT} holds it: run again with a larger max_minutes "
                  "to continue", flush=True)
        if it >= self.total_iters:
            self.stopped_by = None  # the signal came during the last step: the run is complete all the same
        return self.summary(self.clock() - t_start, finished=it >= self.total_iters, iteration=it)

    def _name_unreadable(self, skipped: list[Skipped]) -> None:
        """Keep the first MAX_NAMED_UNREADABLE skipped files (path relative to the split, reason) for summary.json."""
        room = MAX_NAMED_UNREADABLE - len(self.unreadable_files)
        root = Path(getattr(self.loader.dataset.dataset, "root", ""))
        for s in skipped[:max(room, 0)]:
            path = Path(s.path)
            name = str(path.relative_to(root)) if s.path and path.is_relative_to(root) else s.path
            self.unreadable_files.append({"path": name, "reason": s.reason})

    # ------------------------------------------------------------------------- stopping and failing
    def _over_budget(self, epoch_elapsed_s: float) -> bool:
        """True once the training time (this run's and the resumed runs', monitoring excluded) reaches
        ``max_minutes``; all ranks agree, so they stop at the same step boundary."""
        if not self.cfg.max_minutes:
            return False
        over = self.stats["train_time_s"] + epoch_elapsed_s >= self.cfg.max_minutes * 60.0
        if self.info.distributed:
            over = bool(all_reduce_sum(torch.tensor([float(over)], device=self.info.device)).item() > 0)
        self.budget_reached = self.budget_reached or over
        return over

    def _signal_stop(self, signals: StopSignals) -> bool:
        """True on every rank once any rank caught SIGINT/SIGTERM (all stop at this step boundary)."""
        signum = max_over_ranks(int(signals.received or 0), self.info.device)
        if signum:
            self.stopped_by = signal.Signals(signum).name
        return bool(signum)

    def _fail(self, reason: str) -> None:
        raise LearnedNothing(f"{reason}; summary.json says finished: false")

    def _nothing_trained(self, epoch: int, first: int, unreadable: int, nan_skipped: int) -> str:
        images, steps = len(self.loader.dataset), self.iters - first
        where = f"the rest of epoch {epoch + 1}" if first else f"epoch {epoch + 1}"
        if unreadable and not nan_skipped:
            return (f"all {unreadable} images of {where} were unreadable ({images} in the training set, "
                    f"{self.cfg.data.path}); nothing was trained: fix the data, or run with "
                    "data.on_bad_image=error to stop at the first bad file")
        return (f"{where} trained no samples: {nan_skipped} of {steps} steps skipped for a non-finite loss"
                f"{f', {unreadable} images unreadable' if unreadable else ''}; nothing was trained: "
                "lower optim.base_lr or check the data")

    def _check_learned(self, it: int, trained: int) -> None:
        """Rules (1) and (2) of the module docstring over everything this run has done when its loop ends."""
        if trained == 0:
            self._fail(f"no sample was trained in the {it - self.start_iteration} step(s) this run made "
                       f"(skipped images: {self.stats['skipped_images']}, skipped steps: "
                       f"{self.stats['nan_steps_skipped']})")
        skipped = self.stats["nan_steps_skipped"]
        if skipped > MAX_SKIPPED_FRACTION * it:
            self._fail(f"{skipped} of {it} steps skipped for a non-finite loss (more than "
                       f"{MAX_SKIPPED_FRACTION:.0%}); the run did not train: lower optim.base_lr or check the data")

    def train_step(self, views: Any, epoch: int, it: int) -> int:
        """One DINO step: teacher on global crops, student on all, loss, backward, clip, step, EMA."""
        cfg, dev = self.cfg, self.info.device
        if self.gpu_aug is not None:
            views = self.gpu_aug(views.to(dev, non_blocking=True))
        else:
            views = [v.to(dev, non_blocking=True) for v in views]
        if cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        n = views[0].shape[0]
        dino_optim.set_lr_wd(self.optimizer, float(self.lr_sched[it]), float(self.wd_sched[it]))
        # a skipped step must leave no trace: its forward pass already moved the BatchNorm running statistics
        # and the loss centre, and one NaN batch would poison them (and every later step) for good
        buffers = _snapshot_buffers(self.student, self.teacher, self.loss_fn) if cfg.on_nan == "skip-step" else []

        with self.autocast():
            with torch.no_grad():
                teacher_out = self.teacher(views[:2])
            student_out = self.student_ddp(views)
        loss = self.loss_fn(student_out.float(), teacher_out.float(), epoch)

        if not self._all_finite(loss):
            _restore_buffers(buffers)
            self._on_non_finite(loss, epoch, it)
            return 0
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.optim.clip_grad:
            dino_optim.clip_per_parameter(self.student.parameters(), cfg.optim.clip_grad)
        dino_optim.cancel_last_layer_gradients(self.student, epoch, cfg.optim.freeze_last_layer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        momentum = float(self.m_sched[it])
        update_teacher(self.student, self.teacher, momentum)

        self.progress.add_images(n * self.info.world_size)
        if it == self.start_iteration and cfg.monitor.log_images and self.tb is not None:
            self._log_crops(views, it)
        if (it + 1) % cfg.monitor.log_every == 0 or it + 1 == self.total_iters:
            self._log_step(loss, epoch, it, momentum)
        return n

    # --------------------------------------------------------------------------------- non-finite loss
    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if self.info.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def _on_non_finite(self, loss: torch.Tensor, epoch: int, it: int) -> None:
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in getattr(self.loss_fn, "last_stats", {}).items()
                          if k != "loss" and (isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)))
        if self.cfg.on_nan == "skip-step":
            self.stats["nan_steps_skipped"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            self._log({"type": "nan_skip", "epoch": epoch, "iteration": it, "loss": float(loss.detach())})
            if self.info.is_main:
                print(f"warning: non-finite loss at step {it + 1}; step skipped "
                      f"({self.stats['nan_steps_skipped']} so far)", flush=True)
            return
        good = self.out / CHECKPOINT
        where = f"the last good checkpoint {good} is unchanged" if good.is_file() else "no checkpoint was written yet"
        raise NonFiniteLoss(f"non-finite loss at step {it + 1} (epoch {epoch + 1}; loss={float(loss.detach())}"
                            f"{'; ' + terms if terms else ''}); {where}; lower optim.base_lr, check the data, "
                            "or run with --on-nan skip-step")

    # ----------------------------------------------------------------------------------- checkpoints
    def save(self, epoch: int, batch_in_epoch: int, periodic: bool = False) -> None:
        """Write ``checkpoint.pt`` (and ``checkpoint_XXXX.pt`` when periodic) atomically, from rank 0."""
        if epoch >= self.epochs:
            epoch, batch_in_epoch = self.epochs, 0
        # rule (3): every rank holds the same parameters, so every rank takes this decision alike
        bad = _non_finite_parameters(student=self.student, teacher=self.teacher)
        if bad:
            ckpt = self.out / CHECKPOINT
            kept = f"the last checkpoint {ckpt} is unchanged" if ckpt.is_file() else "no checkpoint was written"
            self._fail(f"{len(bad)} weight tensor(s) became non-finite by iteration {epoch * self.iters + batch_in_epoch}"
                       f" (e.g. {bad[0]}); not saved, {kept}; lower optim.base_lr or check the data")
        rng = gather_rng_states()
        if not self.info.is_main:
            return
        state = {
            "config": to_dict(self.cfg), "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "loss": self.loss_fn.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "iteration": epoch * self.iters + batch_in_epoch, "rng": rng, "world_size": self.info.world_size,
            "stats": dict(self.stats), "data": dict(self.data_fingerprint),
        }
        save_atomic(state, self.out / CHECKPOINT)
        if periodic:
            save_atomic(state, self.out / f"checkpoint_{epoch:04d}.pt")

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        _restore(ckpt, self.student, self.teacher, self.optimizer, self.scaler, self.loss_fn, self.info, path)
        # after the weights: a checkpoint of another architecture gets the more specific shape message
        changed = changed_keys(ckpt["config"], to_dict(self.cfg)) if "config" in ckpt else []
        if changed:
            key, old, new = changed[0]
            more = f" and {len(changed) - 1} more key(s)" if len(changed) > 1 else ""
            raise UserError(f"{path} was written by a run with a different config ({key}: {old} -> {new}{more}); "
                            f"resuming would not continue that run: use a new output_dir, or pass --no-resume to "
                            f"start over")
        self._check_same_data(ckpt.get("data"), path)
        self.start_epoch, self.start_batch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        self.stats.update(ckpt.get("stats", {}))
        self.resumed_from = path
        if self.info.is_main:
            print(f"resumed from {path} at epoch {self.start_epoch + 1}, "
                  f"iteration {self.start_epoch * self.iters + self.start_batch}", flush=True)

    def _check_same_data(self, saved: dict | None, path: Path) -> None:
        """Refuse to resume on another training set: its shuffle differs, so the run would not continue exactly."""
        now = self.data_fingerprint
        if not saved:
            if self.info.is_main:
                log.warning("%s records no training-set fingerprint (written by an older version): cannot check "
                            "that the data are the same as when it was written", path)
            return
        if saved.get("images") == now["images"] and saved.get("digest") == now["digest"]:
            return
        what = (f"{saved.get('images')} images then, {now['images']} now" if saved.get("images") != now["images"]
                else f"{now['images']} images both times, but a different file list")
        if self.allow_data_change:
            if self.info.is_main:
                log.warning("resuming on a different training set (%s), as --allow-data-change asks: the run no "
                            "longer continues exactly", what)
            return
        raise UserError(f"{path} was written while training on a different training set ({what}; "
                        f"data.path={self.cfg.data.path}); resuming would not continue that run: point data.path at "
                        "the original data, pass --allow-data-change to switch deliberately, or use a new output_dir")

    # ---------------------------------------------------------------------------------------- logging
    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def _log_step(self, loss: torch.Tensor, epoch: int, it: int, momentum: float) -> None:
        s = getattr(self.loss_fn, "last_stats", {})
        values = {"loss": float(loss.detach()), "lr": float(self.lr_sched[it]), "wd": float(self.wd_sched[it]),
                  "momentum": momentum}
        values.update({k: float(v) for k, v in s.items() if k != "loss" and isinstance(v, (int, float, torch.Tensor))})
        if not self.info.is_main:
            return
        self._log({"type": "train", "epoch": epoch, "iteration": it, **values,
                   "images_per_s": self.progress.images_per_s()})
        self.tb.scalars({f"train/{k}": v for k, v in values.items()}, it)
        self.progress.line(epoch, self.epochs, it, {"loss": values["loss"], "lr": values["lr"]})

    def _log_crops(self, views: list[torch.Tensor], it: int) -> None:
        a = self.cfg.aug
        for i, v in enumerate(views[: min(len(views), 3)]):
            self.tb.images(f"crops/view{i}", denormalize(v[:8].detach().float().cpu(), a.mean, a.std).clamp(0, 1), it)

    # ------------------------------------------------------------------------------------ monitoring
    def monitor(self, epoch: int, it: int) -> None:
        """Online kNN of the teacher's features every ``monitor.knn_every`` epochs (learning / collapse)."""
        every = self.cfg.monitor.knn_every
        if not every or ((epoch + 1) % every and epoch + 1 != self.epochs):
            return
        devices = [self.info.device] if self.info.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the data loaders draw seeds; keep the run's RNG stream
            top1, top5 = online_knn(self.teacher.backbone, self.cfg, self.info)
        if self.info.is_main:
            k = self.cfg.monitor.knn_k
            self._log({"type": "knn", "epoch": epoch, "iteration": it, "k": k, "top1": top1, "top5": top5})
            self.tb.scalars({f"knn/top1_k{k}": top1}, it)
            print(f"epoch {epoch + 1}: online kNN (k={k}) top-1 {top1:.2f}%", flush=True)

    def monitor_label_free(self, epoch: int, it: int) -> None:
        """alpha per mixed block every epoch; RankMe and embedding std every ``monitor.rank_every`` epochs.

        Why: both tell, without labels, whether the teacher's representation spreads out or collapses
        (:mod:`container_ssl.ssl.rankme`); alpha shows how much each mixed block leans on attention.
        """
        if not self.info.is_main:
            return
        m = self.cfg.monitor
        record: dict[str, Any] = {"alpha": mix_weights(self.teacher.backbone)}
        if m.rank_every and ((epoch + 1) % m.rank_every == 0 or epoch + 1 == self.epochs):
            devices = [self.info.device] if self.info.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # keep the run's RNG stream (exact resume)
                record.update(label_free(self.teacher.backbone, self.cfg, self.info))
        if not record["alpha"] and len(record) == 1:
            return
        self._log({"type": "monitor", "epoch": epoch, "iteration": it, **record})
        scalars = {f"alpha/{name}": v for name, v in record["alpha"].items()}
        scalars.update({f"monitor/{k}": float(record[k]) for k in ("rankme", "embed_std") if k in record})
        self.tb.scalars(scalars, it)
        if "rankme" in record:
            print(f"epoch {epoch + 1}: RankMe {record['rankme']:.1f} of {min(record['embed_dim'], record['rank_images'])}"
                  f", normalised embedding std {record['embed_std']:.3f}", flush=True)
            if record["embed_std"] < m.collapse_std:
                print(f"warning: representation collapsing: normalised embedding std {record['embed_std']:.3f} < "
                      f"monitor.collapse_std {m.collapse_std} at epoch {epoch + 1} (RankMe "
                      f"{record['rankme']:.1f}); check teacher_temp, the centre momentum and the learning rate",
                      flush=True)

    def summary(self, wall_time_s: float, finished: bool, iteration: int | None = None) -> dict[str, Any]:
        backbone = self.student.backbone
        out = {
            "model": self.cfg.model.name, "params": sum(p.numel() for p in backbone.parameters()),
            "gmacs": count_macs(backbone, self.cfg.aug.global_size) / 1e9,
            "img_size": self.cfg.aug.global_size, "epochs": self.epochs, "iterations": self.total_iters,
            "images_per_s": self.stats["images_seen"] / max(self.stats["train_time_s"], 1e-9),
            "wall_time_s": wall_time_s, "train_time_s": self.stats["train_time_s"], "finished": finished,
            "world_size": self.info.world_size, "skipped_images": self.stats["skipped_images"],
            "nan_steps_skipped": self.stats["nan_steps_skipped"], "iteration": iteration,
            "failure": self.failure, "stopped_by": self.stopped_by,
            "iterations_done": iteration, "epochs_done": None if iteration is None else iteration / self.iters,
            "budget_reached": self.budget_reached,
        }
        # files the dataset listing left out (not images, symlink loops…), with reasons: data/listing.py
        out["left_out_files"] = left_out_record(self.loader.dataset.dataset)
        # files that failed to decode during training (counted in skipped_images; this rank, this invocation)
        out["unreadable_files"] = self.unreadable_files
        if self.info.is_main:
            (self.out / "summary.json").write_text(json.dumps(out, indent=2))
        return out


def check_not_inside_data(out: Path, data_path: str) -> None:
    """Refuse an output folder inside the data folder: checkpoints and logs would join the training set."""
    data = Path(data_path)
    if not data.is_dir():
        return  # 'cifar10' or an archive: extracted elsewhere
    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise UserError(f"output_dir {out} is inside the data folder {data_path}; the run would write into its "
                        "training set: choose an output_dir outside it")


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """Image count and sha256 of the (relative path, class) list: what the shuffle and the run depend on.

    Why relative paths: ``data.path`` may change between starts (the same data moved or re-extracted);
    the list of files under it, in order, may not.
    """
    root = str(getattr(dataset, "root", ""))
    digest = hashlib.sha256()
    for sample in getattr(dataset, "samples", []):
        name, target = str(sample[0]), int(sample[1])
        rel = os.path.relpath(name, root) if root and os.path.isabs(name) else name
        digest.update(f"{rel}\t{target}\n".encode())
    return {"images": len(dataset), "digest": digest.hexdigest()}


def _non_finite_parameters(**modules: nn.Module) -> list[str]:
    return [f"{what}.{name}" for what, m in modules.items() for name, p in m.named_parameters()
            if p.is_floating_point() and not bool(torch.isfinite(p).all())]


def _snapshot_buffers(*modules: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b, b.detach().clone()) for m in modules for b in m.buffers()]


@torch.no_grad()
def _restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buffer, value in saved:
        buffer.copy_(value)


def _periodic(epoch: int, cfg: DictConfig, epochs: int) -> bool:
    every = cfg.checkpoint_every_epochs
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _restore(ckpt: dict, student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler], loss_fn: nn.Module, info: DistInfo, path: Path) -> None:
    for key in ("student", "teacher", "optimizer", "loss", "epoch", "batch_in_epoch"):
        if key not in ckpt:
            raise UserError(f"checkpoint {path} has no '{key}' entry; it is not a container-ssl pretraining checkpoint")
    from ..run import load_strict

    for name, module in (("student", student), ("teacher", teacher)):
        load_strict(module, ckpt[name], path, f"this model ({name})", "use the config the run was started with")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        loss_fn.load_state_dict(ckpt["loss"])
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path}: optimiser/loss state does not fit this run ({first[:160]}); "
                        "use the config the run was started with") from None
    rng = ckpt.get("rng") or []
    if len(rng) == info.world_size:
        set_rng_state(rng[info.rank])
    elif info.is_main:
        log.warning("checkpoint was written by %d ranks, this run has %d: RNG streams restart from the seed",
                    len(rng), info.world_size)
