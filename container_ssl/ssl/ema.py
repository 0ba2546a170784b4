"""The DINO teacher: a frozen copy of the student updated as an exponential moving average (EMA).

Why an EMA teacher: it averages the student over many steps (a form of model ensembling), which gives
better and more stable targets than the student itself and, together with centring and sharpening,
avoids collapse without negatives.
"""

from __future__ import annotations

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_name(name: str) -> str:
    """Strip DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes so both sides match by name."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                stripped = True
    return name


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter, matched by name.

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
