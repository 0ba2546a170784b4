"""Multi-crop augmentation throughput: torchvision v2 per image (one DataLoader worker's share) vs kornia batched.

Images/s of producing all 2 + N crops of a sample. The CPU figure is per worker process: a DataLoader with
W workers gets about W times it, cores permitting. The kornia path runs on the training device (CPU here,
and the GPU when one is present), batched.

    python benchmarks/augment_bench.py --preset cifar
    python benchmarks/augment_bench.py --preset imagenet
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

PRESETS = {"cifar": dict(global_size=32, local_size=16, n_local=2, source=32),
           "imagenet": dict(global_size=224, local_size=96, n_local=8, source=256)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    pr = PRESETS[args.preset]
    cfg = OmegaConf.merge(OmegaConf.structured(AugConfig), {k: pr[k] for k in ("global_size", "local_size", "n_local")})
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (args.images, 3, pr["source"], pr["source"]), dtype=torch.uint8)
    from torchvision.transforms.v2.functional import to_pil_image

    pil = [to_pil_image(x) for x in batch]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"preset {args.preset}: {pr['source']}-px source, 2x{pr['global_size']} + {pr['n_local']}x{pr['local_size']} crops")
    cpu = MultiCropTransform(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    t = time.perf_counter()
    for im in pil:
        cpu(im)
    print(f"torchvision v2, per image, 1 thread : {len(pil) / (time.perf_counter() - t):9.1f} images/s per worker")
    torch.set_num_threads(threads)  # the batched path uses every core of the training process
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        aug = KorniaMultiCrop(cfg).to(dev)
        x = batch[: args.batch_size].to(dev)
        aug(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            aug(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"kornia batched on {dev:4s} (batch {x.shape[0]})  : {reps * x.shape[0] / (time.perf_counter() - t):9.1f} images/s")


if __name__ == "__main__":
    main()
