"""Datasets: ImageFolder trees, archives of them, torchvision CIFAR-10, robust decoding, label fractions."""

from .datasets import (
    Skipped,
    build_dataset,
    left_out_record,
    resolve_root,
    skip_bad_collate,
)

__all__ = ["Skipped", "build_dataset", "left_out_record", "resolve_root", "skip_bad_collate"]
