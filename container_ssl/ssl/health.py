"""Whether a pretraining run learned anything: the rules that keep a failed run from reporting success.

A run stops with a one-line error, ``finished: false`` and the reason in ``summary.json`` when (1) an
epoch trained zero samples (every image unreadable, or every step skipped for a non-finite loss): the
epoch's checkpoint is not written; (2) more than half of the steps run so far were skipped by
``--on-nan skip-step``: checked when the loop ends; (3) the weights about to be saved are not finite: the
previous checkpoint stays. A non-finite loss under ``--on-nan stop`` is :class:`NonFiniteLoss`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from ..errors import UserError
from ..eval.finite import non_finite_counts

MAX_SKIPPED_FRACTION = 0.5  # more than half of the steps skipped for a non-finite loss: the run failed


class NonFiniteLoss(UserError):
    """The loss became NaN/inf; the message gives the step, the loss terms and the last good checkpoint."""


class LearnedNothing(UserError):
    """The run trained no samples in an epoch, skipped most steps, or ended with non-finite weights."""


def fail(reason: str) -> NoReturn:
    raise LearnedNothing(f"{reason}; summary.json says finished: false")


def nothing_trained(epoch: int, first: int, steps: int, images: int, unreadable: int, nan_skipped: int,
                    data_path: str) -> str:
    """Rule (1)'s reason for ``epoch`` (resumed at batch ``first``, ``steps`` steps, ``images`` in the set)."""
    where = f"the rest of epoch {epoch + 1}" if first else f"epoch {epoch + 1}"
    if unreadable and not nan_skipped:
        return (f"all {unreadable} images of {where} were unreadable ({images} in the training set, "
                f"{data_path}); nothing was trained: fix the data, or run with "
                "data.on_bad_image=error to stop at the first bad file")
    return (f"{where} trained no samples: {nan_skipped} of {steps} steps skipped for a non-finite loss"
            f"{f', {unreadable} images unreadable' if unreadable else ''}; nothing was trained: "
            "lower optim.base_lr or check the data")


def check_learned(it: int, steps_run: int, trained: int, skipped_images: int, nan_skipped: int) -> None:
    """Rules (1) and (2) over everything a run has done when its loop ends at iteration ``it``."""
    if trained == 0:
        fail(f"no sample was trained in the {steps_run} step(s) this run made (skipped images: {skipped_images}, "
             f"skipped steps: {nan_skipped})")
    if nan_skipped > MAX_SKIPPED_FRACTION * it:
        fail(f"{nan_skipped} of {it} steps skipped for a non-finite loss (more than "
             f"{MAX_SKIPPED_FRACTION:.0%}); the run did not train: lower optim.base_lr or check the data")


def check_finite_weights(modules: dict[str, nn.Module], iteration: int, checkpoint: Path) -> None:
    """Rule (3): refuse to save ``modules`` (by name) when a parameter holds NaN/inf."""
    bad = list(non_finite_counts({f"{what}.{name}": p for what, m in modules.items()
                                  for name, p in m.named_parameters()}))
    if bad:
        kept = f"the last checkpoint {checkpoint} is unchanged" if checkpoint.is_file() else "no checkpoint was written"
        fail(f"{len(bad)} weight tensor(s) became non-finite by iteration {iteration} (e.g. {bad[0]}); not saved, "
             f"{kept}; lower optim.base_lr or check the data")


def non_finite_loss(loss: torch.Tensor, stats: dict[str, Any], epoch: int, it: int, checkpoint: Path) -> NonFiniteLoss:
    """The error for a non-finite loss at iteration ``it``, with the loss's diagnostics and the last checkpoint."""
    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items()
                      if k != "loss" and (isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)))
    where = (f"the last good checkpoint {checkpoint} is unchanged" if checkpoint.is_file()
             else "no checkpoint was written yet")
    return NonFiniteLoss(f"non-finite loss at step {it + 1} (epoch {epoch + 1}; loss={float(loss.detach())}"
                         f"{'; ' + terms if terms else ''}); {where}; lower optim.base_lr, check the data, "
                         "or run with --on-nan skip-step")
