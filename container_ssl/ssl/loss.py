"""DINO self-distillation loss with teacher centring and sharpening.

Why centring and sharpening: without them the student/teacher pair collapses, either onto one prototype
(a single dominant dimension) or onto the uniform distribution. Subtracting a running mean of the teacher
outputs (the centre) pushes towards uniform; a low teacher temperature pushes towards one-hot; the two
balance. The loss also records collapse diagnostics (teacher entropy, distance of the mean teacher
distribution from uniform) from the probabilities it computes anyway, so monitoring costs no extra pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32: softmaxes over 65k prototypes lose too much in bf16/fp16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centred teacher and the student, over all cross-view pairs.

    ``student_output`` holds the ``ncrops`` views concatenated along the batch (2 global views first);
    ``teacher_output`` the 2 global views. Every (teacher global view ``i``, student view ``v != i``) pair
    contributes ``-sum(q_i * log_softmax(s_v / student_temp))`` averaged over the batch; the loss is the
    mean over pairs. After the loss the centre is moved towards the (all-ranks) batch mean of the teacher
    outputs. ``last_stats`` then holds detached collapse diagnostics (0-dim tensors, to avoid a device sync
    every step; call ``float()`` when logging): ``teacher_temp``, ``teacher_entropy`` (mean entropy of the
    teacher distributions, nats), ``teacher_kl_uniform`` (KL of the mean teacher distribution to uniform,
    nats: ~0 means every sample uses every prototype equally, i.e. uniform collapse if the entropy is also
    ~log(out_dim); ~log(out_dim) means one prototype wins everywhere) and ``loss``.

    The teacher temperature comes with every call: its warm-up is a schedule of the loop's
    (:func:`container_ssl.ssl.schedules.teacher_temp_schedule`), so the loss knows nothing of epochs.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, ncrops: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if ncrops < 2:
            raise UserError(f"DINO needs at least the 2 global crops, got ncrops={ncrops}")
        if student_temp <= 0:
            raise UserError(f"the student temperature must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise UserError(f"center_momentum must lie in [0, 1], got {center_momentum}")
        self.out_dim = int(out_dim)
        self.ncrops = int(ncrops)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))
        self.last_stats: dict[str, Any] = {}

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if teacher_temp <= 0:
            raise ValueError(f"the teacher temperature must be > 0, got {teacher_temp}")
        if student_output.shape[0] % self.ncrops or teacher_output.shape[0] % 2:
            raise ValueError(f"student batch {student_output.shape[0]} is not divisible by "
                             f"ncrops={self.ncrops} or teacher batch {teacher_output.shape[0]} by 2")
        batch = student_output.shape[0] // self.ncrops
        if teacher_output.shape[0] != 2 * batch:
            raise ValueError(f"teacher batch {teacher_output.shape[0]} must be 2 x the student's "
                             f"per-view batch {batch}")

        student_logp = F.log_softmax(_upcast(student_output) / self.student_temp, dim=-1).chunk(self.ncrops)
        temp = float(teacher_temp)
        with torch.no_grad():
            teacher = _upcast(teacher_output.detach())
            teacher_logq = F.log_softmax((teacher - self.center) / temp, dim=-1)
            teacher_q = teacher_logq.exp()

        total = student_logp[0].new_zeros(())
        n_pairs = 0
        for i, q in enumerate(teacher_q.chunk(2)):
            for v, logp in enumerate(student_logp):
                if v == i:
                    continue
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_pairs += 1
        loss = total / n_pairs
        self._update_center_and_stats(teacher, teacher_q, teacher_logq, temp, loss)
        return loss

    @torch.no_grad()
    def _update_center_and_stats(self, teacher: torch.Tensor, q: torch.Tensor, logq: torch.Tensor,
                                 temp: float, loss: torch.Tensor) -> None:
        """EMA of the teacher batch mean, all-reduced over ranks in the same collective as the diagnostics.

        Why one packed all-reduce: the centre must be identical on every rank (it is part of the teacher),
        and the diagnostics are only meaningful over the global batch; one call keeps the cost of the
        monitoring at zero extra collectives.
        """
        entropy_sum = -(q * logq).sum()
        packed = torch.cat([teacher.sum(0), q.sum(0), entropy_sum.view(1)])
        count = teacher.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
            count *= dist.get_world_size()
        packed = packed / count
        batch_center = packed[: self.out_dim].view(1, -1)
        mean_q = packed[self.out_dim: 2 * self.out_dim]
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype),
                                                    alpha=1.0 - self.center_momentum)
        kl_uniform = (mean_q * torch.log(mean_q.clamp_min(1e-30))).sum() + float(np.log(self.out_dim))
        self.last_stats = {
            "teacher_temp": temp,
            "teacher_entropy": packed[-1],
            "teacher_kl_uniform": kl_uniform,
            "loss": loss.detach(),
        }
