"""Datasets: ImageFolder trees, archives of them, torchvision CIFAR-10, robust decoding, label fractions."""

from .datasets import build_dataset, resolve_root, skip_bad_collate

__all__ = ["build_dataset", "resolve_root", "skip_bad_collate"]
