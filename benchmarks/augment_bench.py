"""Multi-crop augmentation throughput: torchvision v2 per image (one DataLoader worker's share) vs kornia batched.

Images/s of producing all 2 + N crops of a sample. The CPU figure is per worker process: a DataLoader with
W workers gets about W times it, cores permitting. The kornia path runs on the training device (CPU here,
and the GPU when one is present), batched.

    python benchmarks/augment_bench.py --preset cifar
    python benchmarks/augment_bench.py --preset imagenet
    python benchmarks/augment_bench.py --preset imagenet --source-width 384   # 3:2 source images

``--coverage`` instead prints where the crops of both back-ends come from on non-square images (boxes read
back from the pixels of a coordinate-ramp image, see tests/ssl/crop_geometry.py): mean area fraction, mean
log aspect ratio, mean centre, and the share of crops that touch the leftmost / topmost sixth of the image.

    python benchmarks/augment_bench.py --coverage
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from omegaconf import OmegaConf

from container_ssl.config import AugConfig
from container_ssl.ssl.augment import MultiCropTransform
from container_ssl.ssl.augment_gpu import KorniaMultiCrop
from container_ssl.ssl.loader import build_augmentation, collate_views

PRESETS = {"cifar": {"global_size": 32, "local_size": 16, "n_local": 2, "source": 32},
           "imagenet": {"global_size": 224, "local_size": 96, "n_local": 8, "source": 256}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--source-width", type=int, default=0, help="source image width (0: square)")
    p.add_argument("--coverage", action="store_true", help="print crop-box statistics instead of throughput")
    p.add_argument("--draws", type=int, default=500, help="--coverage: augmentations per image and back-end")
    args = p.parse_args()
    if args.coverage:
        coverage(args.draws)
        return
    pr = PRESETS[args.preset]
    height, width = pr["source"], args.source_width or pr["source"]
    cfg = OmegaConf.merge(OmegaConf.structured(AugConfig),
                          {k: pr[k] for k in ("global_size", "local_size", "n_local")}, {"backend": "gpu"})
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (args.images, 3, height, width), dtype=torch.uint8)
    from torchvision.transforms.v2.functional import to_pil_image

    pil = [to_pil_image(x) for x in batch]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"preset {args.preset}: {width}x{height}-px source, 2x{pr['global_size']} + {pr['n_local']}x{pr['local_size']} crops")
    cpu = MultiCropTransform(cfg)
    loader_side, _ = build_augmentation(cfg, torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    t = time.perf_counter()
    for im in pil:
        cpu(im)
    print(f"torchvision v2, per image, 1 thread : {len(pil) / (time.perf_counter() - t):9.1f} images/s per worker")
    t = time.perf_counter()
    loaded = [(loader_side(im), 0) for im in pil[: args.batch_size]]
    print(f"kornia back-end, loader side, 1 thr : {len(loaded) / (time.perf_counter() - t):9.1f} images/s per worker")
    torch.set_num_threads(threads)  # the batched path uses every core of the training process
    views = collate_views(loaded)[0]  # what the loader hands to train_step
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        aug = KorniaMultiCrop(cfg).to(dev)
        x = views.to(dev)
        aug(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            aug(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"kornia batched on {dev:4s} (batch {len(loaded)})  : {reps * len(loaded) / (time.perf_counter() - t):9.1f} images/s")

def coverage(draws: int) -> None:
    """Crop-box statistics in original-image pixels, per aspect ratio, back-end and crop type."""
    from tests.ssl.crop_geometry import SHAPES, box_stats, crop_boxes

    print(f"command: python {' '.join(sys.argv)}")
    print(f"{draws} augmentations of one coordinate-ramp image per shape; 32-px global, 16-px local crops")
    print("shape backend crops  | area  log(w/h) centre x,y  | touch left 1/6  touch top 1/6")
    for name, height, width in SHAPES:
        for backend in ("cpu", "gpu"):
            for kind, boxes in zip(("global", "local"), crop_boxes(backend, height, width, draws)):
                s = box_stats(boxes, height, width)
                print(f"{name:5s} {backend:7s} {kind:6s} | {s['area'].mean():.3f} {s['log_aspect'].mean():+.3f}  "
                      f"{s['cx'].mean():.3f},{s['cy'].mean():.3f} | {100 * s['left'].mean():5.1f}%  "
                      f"{100 * s['top'].mean():13.1f}%")


if __name__ == "__main__":
    main()
