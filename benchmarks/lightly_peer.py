"""The peer at equal compute: lightly's DINO on CIFAR-10, set up as lightly's CIFAR-10 benchmark does it.

Why a peer: a kNN figure of our DINO means little without a well-known implementation trained for the same
wall time on the same machine and scored by the same kNN code on the same val split. lightly's benchmark
(docs/source/getting_started/benchmarks/cifar10_benchmark.py, ``DINOModel``) uses:

- backbone: lightly's CIFAR ResNet-18 (``ResNetGenerator('resnet-18')``: 3x3 stem, no max-pool) without its
  classifier, i.e. ``Sequential(*children[:-1], AdaptiveAvgPool2d(1))`` (kept as is, without the ReLU after
  the stem's BatchNorm that this drops, because that is the peer as published);
- head: ``DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)`` cut to two layers for CIFAR-10
  (512 -> 2048 BN GELU -> 256), then the weight-normed 2048-way last layer;
- loss ``DINOLoss(output_dim=2048)`` (teacher temperature 0.04, student 0.1, centre momentum 0.9);
- teacher: ``update_momentum`` with a constant m = 0.99 before every step;
- augmentation: two 32-px global views, no local views, no blur (``DINOTransform``, lightly's successor of
  the benchmark's ``DINOCollateFunction``); ImageNet normalisation;
- SGD, lr 0.06 x batch / 128, momentum 0.9, weight decay 5e-4, cosine annealing per epoch; batch 128.

The number of epochs (and, when fewer than two fit, a seeded subset) is fitted to the wall-time budget
from a short calibration, exactly as for our runs (``affinity_study.fit_schedule``), and the loop also stops
at the first step past the budget. Everything here is written for this study; only lightly's public
modules are used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from container_ssl.checkpoint import save_atomic
from container_ssl.data import build_dataset
from container_ssl.eval.features import extract_features
from container_ssl.eval.knn import DEFAULT_KS, knn_classify
from container_ssl.eval.transforms import eval_transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # lightly's default normalisation
BENCHMARK = {"batch_size": 128, "base_lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4, "teacher_momentum": 0.99,
             "out_dim": 2048, "img_size": 32}


def _backbone() -> nn.Module:
    from lightly.models import ResNetGenerator

    resnet = ResNetGenerator("resnet-18")
    return nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _head() -> nn.Module:
    from lightly.models.modules.heads import DINOProjectionHead, ProjectionHead

    head = DINOProjectionHead(512, 2048, 256, BENCHMARK["out_dim"], batch_norm=True)
    head.layers = ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]).layers
    return head


class _Peer:
    """Student and teacher (built separately: lightly's head uses the old weight_norm, which deepcopy refuses)."""

    def __init__(self, seed: int, batch_size: int, epochs: int, device: torch.device) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.utils import deactivate_requires_grad

        torch.manual_seed(seed)
        self.student = nn.Sequential(_backbone(), _head()).to(device)
        self.teacher = nn.Sequential(_backbone(), _head()).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.criterion = DINOLoss(output_dim=BENCHMARK["out_dim"]).to(device)
        lr = BENCHMARK["base_lr"] * batch_size / 128
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=BENCHMARK["momentum"],
                                         weight_decay=BENCHMARK["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(epochs, 1))
        self.device = device

    def step(self, views: list[torch.Tensor], epoch: int) -> float:
        from lightly.models.utils import update_momentum

        update_momentum(self.student, self.teacher, m=BENCHMARK["teacher_momentum"])
        views = [v.to(self.device, non_blocking=True) for v in views]
        teacher_out = [self.teacher(v) for v in views[:2]]
        student_out = [self.student(v) for v in views]
        loss = self.criterion(teacher_out, student_out, epoch=epoch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _loader(data: str, limit: int, batch_size: int, seed: int, num_workers: int) -> DataLoader:
    from lightly.transforms.dino_transform import DINOTransform

    transform = DINOTransform(global_crop_size=BENCHMARK["img_size"], n_local_views=0, gaussian_blur=(0, 0, 0))
    dataset = build_dataset(data, "train", transform=transform, limit=limit, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), collate_fn=default_collate)


def train_images(data: str) -> int:
    """How many images the train split holds (the schedule is fitted to it)."""
    return len(build_dataset(data, "train").targets)


def calibrate(data: str, steps: int = 6, batch_size: int = BENCHMARK["batch_size"], seed: int = 0,
              num_workers: int = 1, device: str = "cpu") -> float:
    """Images/s of the peer's training step on this machine, from ``steps`` steps of a throwaway model."""
    peer = _Peer(seed, batch_size, 1, torch.device(device))
    loader = iter(_loader(data, batch_size * (steps + 1), batch_size, seed, num_workers))
    peer.step(next(loader)[0], 0)  # warm-up: allocator, threads
    t0, images = time.perf_counter(), 0
    for views, _ in loader:
        peer.step(views, 0)
        images += views[0].shape[0]
    return images / max(time.perf_counter() - t0, 1e-9)


def train(data: str, out: Path, epochs: int, subset: int, minutes: float, batch_size: int = BENCHMARK["batch_size"],
          seed: int = 0, num_workers: int = 1, device: str = "cpu", max_steps: int = 0) -> dict[str, Any]:
    """Pretrain the peer for ``epochs`` (over a ``subset`` of the train split when > 0), stopping at the first
    step past ``minutes`` of training (or ``max_steps``, for smoke runs); saves the teacher backbone to
    ``out/backbone.pt`` and returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    peer = _Peer(seed, batch_size, epochs, torch.device(device))
    loader = _loader(data, subset, batch_size, seed, num_workers)
    train_s, images, steps, losses, budget_reached = 0.0, 0, 0, [], False
    for epoch in range(epochs):
        peer.student.train()
        t0 = time.perf_counter()
        for views, _ in loader:
            losses.append(peer.step(views, epoch))
            images += views[0].shape[0]
            steps += 1
            if minutes and train_s + time.perf_counter() - t0 >= minutes * 60:
                budget_reached = True
            if budget_reached or steps == max_steps:
                break
        train_s += time.perf_counter() - t0
        peer.scheduler.step()
        if budget_reached or steps == max_steps:
            break
    save_atomic({"backbone": peer.teacher[0].state_dict()}, out / "backbone.pt")
    return {"impl": "lightly", "model": "resnet18_cifar (lightly ResNetGenerator)", "epochs": epochs,
            "subset": subset, "iterations_done": steps, "epochs_done": steps / max(len(loader), 1),
            "images_per_s": images / max(train_s, 1e-9), "train_time_s": train_s, "budget_reached": budget_reached,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "params": sum(p.numel() for p in peer.teacher[0].parameters()), **BENCHMARK, "batch_size": batch_size}


def knn(data: str, out: Path, batch_size: int = 256, num_workers: int = 1, device: str = "cpu",
        ks: tuple[int, ...] = tuple(DEFAULT_KS)) -> dict[str, Any]:
    """The teacher backbone's pooled features scored by our weighted kNN (train bank, val queries)."""
    from container_ssl.checkpoint import load_checkpoint

    backbone = _backbone()
    backbone.load_state_dict(load_checkpoint(out / "backbone.pt")["backbone"])
    transform = eval_transform(BENCHMARK["img_size"], IMAGENET_MEAN, IMAGENET_STD)
    common = {"batch_size": batch_size, "device": device, "num_workers": num_workers, "use_amp": True}
    train_f, train_y = extract_features(backbone, build_dataset(data, "train", transform=transform), **common)
    val_ds = build_dataset(data, "val", transform=transform)
    val_f, val_y = extract_features(backbone, val_ds, **common)
    results = knn_classify(train_f, train_y, val_f, val_y, ks=list(ks), num_classes=len(val_ds.classes),
                           device=torch.device(device))
    return {"results": [r.as_dict() for r in results], "train": {"images": int(train_f.shape[0])},
            "val": {"images": int(val_f.shape[0])}, "feature_dim": int(train_f.shape[1])}
