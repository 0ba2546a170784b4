"""kNN evaluation cost: our chunked torch and faiss back-ends vs an unchunked all-in-memory kNN.

The unchunked baseline mirrors the approach of facebookresearch/dino's ``eval_knn``: the whole
[queries x bank] similarity matrix is formed at once (it processes queries in blocks of 100 but keeps the
full bank on the device, and needs at least 100 queries). Its memory grows with queries x bank; ours is
bounded by the chunk size. All back-ends give the same top-1, which the script checks.

    python benchmarks/knn_bench.py                         # CIFAR scale: 50k x 5k, 384-d, on the CPU
    python benchmarks/knn_bench.py --bank 1281167 --queries 50000 --device cuda   # ImageNet scale
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from container_ssl.eval.knn import knn_classify


def unchunked_top1(train_f, train_y, test_f, test_y, k: int, t: float, num_classes: int, device) -> float:
    """All similarities at once, then top-k and DINO's weighted vote (the memory-hungry way)."""
    train_f, test_f = train_f.to(device), test_f.to(device)
    sims = test_f @ train_f.T                                  # [Q, N] in one piece
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(test_f.shape[0], num_classes, device=device)
    votes.scatter_add_(1, train_y.to(device)[idx], (top / t).exp())
    return (votes.argmax(1).cpu() == test_y).double().mean().item() * 100


def features(n: int, centres: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered synthetic features (class centres + noise), L2-normalised, so accuracy is meaningful.

    Bank and queries must share ``centres``: drawn apart, the queries' classes have nothing to do with the
    bank's and every back-end sits at chance (which hid nothing about speed, but said nothing either).
    """
    classes, dim = centres.shape
    y = torch.randint(0, classes, (n,), generator=g)
    f = centres[y] + 0.7 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(f, dim=1), y


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-unchunked", action="store_true", help="skip the all-in-memory baseline (too big)")
    p.add_argument("--json")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=g)
    train_f, train_y = features(args.bank, centres, g)
    test_f, test_y = features(args.queries, centres, g)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"bank {args.bank} x queries {args.queries}, {args.dim}-d, k={args.k}, device {args.device}")
    rows = []
    for backend in ("torch", "faiss"):
        (res,), dt = timed(lambda b=backend: knn_classify(train_f, train_y, test_f, test_y, ks=[args.k], backend=b,
                                                          num_classes=args.classes, device=args.device))
        rows.append({"method": f"ours ({backend})", "seconds": dt, "top1": res.top1})
    if not args.skip_unchunked:
        dense_mb = args.queries * args.bank * 4 / 2 ** 20
        top1, dt = timed(lambda: unchunked_top1(train_f, train_y, test_f, test_y, args.k, 0.07, args.classes,
                                                args.device))
        rows.append({"method": "unchunked", "seconds": dt, "top1": top1, "similarity_matrix_mb": dense_mb})
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    for r in rows:
        extra = f"  similarity matrix {r['similarity_matrix_mb']:.0f} MB" if "similarity_matrix_mb" in r else ""
        print(f"{r['method']:14s} {r['seconds']:8.2f} s  top-1 {r['top1']:.2f}{extra}")
    print(f"process peak memory {peak:.0f} MB; ours holds at most one chunk of similarities "
          f"(512 MB by default) regardless of the number of queries")
    if args.json:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "bank": args.bank, "queries": args.queries,
                                               "dim": args.dim, "k": args.k, "device": args.device,
                                               "faiss_gpus": gpus, "peak_mem_mb": peak, "rows": rows}, indent=2))
    top1 = {r["method"]: r["top1"] for r in rows}
    if max(top1.values()) - min(top1.values()) > 0.01:  # the back-ends must agree, or the timing means nothing
        sys.exit(f"error: the kNN back-ends disagree on top-1: {top1}")
    if min(top1.values()) < 2 * 100.0 / args.classes:  # clustered features: far above chance, or a broken set-up
        sys.exit(f"error: kNN top-1 {top1} is at chance level ({100.0 / args.classes:.2f}%); the benchmark is broken")


if __name__ == "__main__":
    main()
