"""Cost of the feature cache's key on a real ImageFolder tree: stat only vs stat + sha256 of every file.

The key (container_ssl/eval/feature_key.py) is computed before every cached evaluation, so its cost is
paid on every kNN / linear run, hit or miss. "cold" evicts each file's pages from the page cache first
(``posix_fadvise(DONTNEED)``, per file: no system-wide cache drop; inodes stay cached, so a stat is never
really cold); "warm" runs right after a full read. For scale, the last line times what a cache miss costs
before any model runs: decoding and transforming a sample of the images (the evaluators' eval transform).

    python benchmarks/feature_key_bench.py --data /tmp/cifar10      # the shared archive, extracted once
"""

from __future__ import annotations

import argparse
import os
import time

from container_ssl.data import build_dataset
from container_ssl.eval.feature_key import file_identities
from container_ssl.eval.transforms import eval_transform


def evict(paths: list[str]) -> None:
    """Drop these files' clean pages from the page cache (Linux; a no-op where unsupported)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ImageFolder root holding the splits")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the best is printed")
    parser.add_argument("--decode", type=int, default=5000, help="images decoded for the reference line")
    args = parser.parse_args()

    start = time.perf_counter()
    datasets = [build_dataset(args.data, split) for split in args.splits]
    listing = time.perf_counter() - start
    samples = [s for ds in datasets for s in ds.samples]
    paths = [p for p, _ in samples]
    total = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} files, {total / 2**20:.1f} MiB in {args.data} ({'+'.join(args.splits)}); "
          f"listing them (build_dataset) took {listing:.2f} s")

    def key(content: bool) -> None:
        for ds in datasets:
            file_identities(ds.samples, ds.root, content=content)

    print(f"{'key':28s} {'page cache':10s} {'seconds':>8s} {'files/s':>9s}")
    for content in (False, True):
        for cache in ("cold", "warm"):
            best = float("inf")
            for _ in range(args.repeats):
                if cache == "cold":
                    evict(paths)
                else:
                    key(True)  # every byte read once: the page cache holds them
                best = min(best, timed(lambda c=content: key(c)))
            name = "stat + sha256 of the bytes" if content else "stat only (size, mtime_ns…)"
            print(f"{name:28s} {cache:10s} {best:8.2f} {len(paths) / best:9.0f}")
    first = datasets[0]
    first.transform = eval_transform(32)
    n = min(args.decode, len(first))
    seconds = timed(lambda: [first[i] for i in range(n)]) * len(paths) / n
    print(f"{'reference: decode + resize':28s} {'warm':10s} {seconds:8.2f} {len(paths) / seconds:9.0f}"
          f"  (extrapolated from {n} images; the model's forward pass comes on top)")


if __name__ == "__main__":
    main()
