"""The DINO meta-architecture: student, EMA teacher, loss and one optimisation step, apart from the loop.

Why apart from the loop (:mod:`container_ssl.ssl.trainer`): what a DINO step *is* (teacher on the global
crops, student on all crops, the loss, the update, the EMA) does not depend on where the data come from,
how long the run is or how it is saved. So this class holds no notion of epochs: the loop reads the
schedules and passes their values in (the teacher temperature each step, the teacher momentum after it,
whether the head's last layer is still frozen). The head decides which of its parameters that freezing
concerns; the optimiser is the loop's, built from :meth:`DINO.param_groups`.

:meth:`DINO.state_dict` holds the entries ``student``, ``teacher`` and ``loss`` of ``checkpoint.pt``,
under the keys (and with the parameter names) that checkpoints have always used: ``student`` and
``teacher`` are the unwrapped :class:`MultiCropWrapper` models (never DDP's ``module.`` or
``torch.compile``'s ``_orig_mod.`` names), ``loss`` holds the centre.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from ..models import DINOHead, create_backbone
from ..models.complexity import count_macs
from .loss import DINOLoss
from .optim import clip_per_parameter, param_groups


class MultiCropWrapper(nn.Module):
    """``forward(crops)`` -> head outputs of all crops, concatenated in input order along the batch.

    ``backbone(x)`` must return pooled features ``[B, D]`` (timm backbones built with ``num_classes=0``).
    Why grouping: one backbone call per crop wastes kernel launches and gives BatchNorm tiny batches, so
    consecutive crops of the same size share one call; the head, on pooled features, runs once on them all.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("MultiCropWrapper needs at least one crop batch")
        sizes = torch.tensor([tuple(c.shape[-2:]) for c in crops])
        _, counts = torch.unique_consecutive(sizes, dim=0, return_counts=True)
        features = []
        start = 0
        for count in counts.tolist():
            group = crops[start:start + count]
            features.append(self.backbone(torch.cat(group) if count > 1 else group[0]))
            start += count
        return self.head(torch.cat(features) if len(features) > 1 else features[0])


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


def amp_context(cfg: DictConfig, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """(autocast context factory, GradScaler for fp16 or None) for ``optim.amp`` on ``device``."""
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


class DINO:
    """Student (backbone + head, DDP-wrapped in a distributed run), frozen EMA teacher, DINO loss, precision.

    Built from the run's config on ``device``; ``distributed`` wraps the student in DDP (device
    ``local_rank`` on a GPU) and, on GPUs, turns BatchNorm into SyncBatchNorm.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, distributed: bool = False, local_rank: int = 0) -> None:
        self.distributed = distributed
        self.clip_grad = float(cfg.optim.clip_grad)
        student, teacher = build_models(cfg)
        batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules())
        if distributed and device.type == "cuda" and batchnorm:
            # batch statistics over the global batch (torch supports SyncBatchNorm on GPUs only;
            # CPU/gloo runs keep per-rank statistics)
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.student: MultiCropWrapper = student.to(device, memory_format=fmt)
        self.teacher: MultiCropWrapper = teacher.to(device, memory_format=fmt)
        if cfg.compile:  # in place: state_dict keys stay those of the eager model
            self.student.backbone.compile()
            self.teacher.backbone.compile()
        self.student_ddp: nn.Module = self.student
        if distributed:
            ids = [local_rank] if device.type == "cuda" else None
            self.student_ddp = DistributedDataParallel(self.student, device_ids=ids)
            # DDP has broadcast rank 0's student; each rank's teacher is still a copy of its own (differently
            # seeded) student. Start every teacher from the shared weights, or the ranks' teachers differ for
            # the whole run and a resume (which loads rank 0's teacher everywhere) is not exact.
            self.teacher.load_state_dict(self.student.state_dict())
        lc = cfg.loss
        self.loss = DINOLoss(cfg.model.out_dim, 2 + cfg.aug.n_local, lc.student_temp, lc.center_momentum).to(device)
        self.autocast, self.scaler = amp_context(cfg, device)

    def param_groups(self) -> list[dict]:
        """The student's parameters with and without weight decay (the backbone names its exceptions)."""
        no_decay = getattr(self.student.backbone, "no_weight_decay", lambda: set())()
        return param_groups(self.student, no_decay)

    def train(self) -> None:
        """Both networks in train mode: the teacher keeps its own BatchNorm statistics, as in DINO."""
        self.student.train()
        self.teacher.train()

    def step(self, views: list[torch.Tensor], teacher_temp: float, optimizer: torch.optim.Optimizer,
             freeze_last_layer: bool = False,
             undo_on_skip: bool = False) -> tuple[torch.Tensor, dict[str, Any], bool]:
        """Teacher on the 2 global crops, student on all, the loss; then, if it is finite on every rank,
        backward, per-parameter clipping, the frozen last layer's gradients dropped, and the optimiser step.

        Returns (loss, the loss's diagnostics, applied). A non-finite loss updates nothing (applied is False).
        ``undo_on_skip`` also puts back the buffers its forward pass moved (BatchNorm statistics, the loss
        centre): one NaN batch would otherwise poison them, and every later step, for good. The EMA is
        :meth:`update_teacher`.
        """
        modules = (self.student, self.teacher, self.loss) if undo_on_skip else ()
        saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
        with self.autocast():
            with torch.no_grad():
                teacher_out = self.teacher(views[:2])
            student_out = self.student_ddp(views)
        loss = self.loss(student_out.float(), teacher_out.float(), teacher_temp)
        if not self._finite_everywhere(loss):
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
            return loss, self.loss.last_stats, False
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.clip_grad:
            clip_per_parameter(self.student.parameters(), self.clip_grad)
        if freeze_last_layer:
            self.student.head.cancel_last_layer_gradients()
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return loss, self.loss.last_stats, True

    def update_teacher(self, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` (parameters only)."""
        update_teacher(self.student, self.teacher, momentum)

    def backbone_cost(self, img_size: int) -> dict[str, float]:
        """The student backbone's parameter count and GMACs at ``img_size`` (for summary.json)."""
        backbone = self.student.backbone
        return {"params": sum(p.numel() for p in backbone.parameters()), "gmacs": count_macs(backbone, img_size) / 1e9}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries ``student``, ``teacher`` and ``loss`` (see the module docstring)."""
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "loss": self.loss.state_dict()}

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """All ranks take the same decision (a MIN all-reduce), or the ones that step would wait for the rest."""
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if self.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)


def _unwrap_name(name: str) -> str:
    """Strip DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes so both sides match by name."""
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter, matched by name.

    Why an EMA teacher: averaging the student over many steps gives better and more stable targets than the
    student itself and, with centring and sharpening, avoids collapse without negatives.

    Only parameters move: buffers (BatchNorm running statistics, counters) are deliberately NOT copied.
    DINO's teacher runs in train mode on the global crops it sees and keeps its own BatchNorm statistics,
    computed from its own activations; overwriting them with the student's (which also see the local crops
    and different weights) would make them inconsistent with the teacher's weights.

    Names are compared with DDP ``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes removed, so a
    wrapped student updates a plain teacher. The update uses ``torch._foreach_*`` kernels: one fused launch
    per group instead of two per tensor.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"teacher momentum must lie in [0, 1], got {momentum}")
    student_params = {_unwrap_name(n): p for n, p in student.named_parameters()}
    teacher_list: list[torch.Tensor] = []
    student_list: list[torch.Tensor] = []
    for name, t in teacher.named_parameters():
        key = _unwrap_name(name)
        s = student_params.pop(key, None)
        if s is None:
            raise KeyError(f"teacher parameter '{key}' has no counterpart in the student")
        if s.shape != t.shape:
            raise ValueError(f"parameter '{key}': student shape {tuple(s.shape)} != teacher {tuple(t.shape)}")
        teacher_list.append(t)
        student_list.append(s.detach())
    if student_params:
        raise KeyError(f"student parameters missing from the teacher: {sorted(student_params)[:5]}")
    if not teacher_list:
        return
    torch._foreach_mul_(teacher_list, momentum)
    torch._foreach_add_(teacher_list, student_list, alpha=1.0 - momentum)
