"""``container-ssl knn``: weighted k-NN accuracy of a checkpoint's frozen features.

Why a separate module from :mod:`container_ssl.eval.knn`: the algorithm works on tensors and is reused
by the pretraining loop's online monitor; this module only turns flags into data, features and a report
(a table on stdout and ``<output-dir>/knn.json``, which ``container-ssl report`` reads).
"""

from __future__ import annotations

import argparse

from ..argtypes import float_range, int_range
from ..run import KNN_REPORT
from .knn import DEFAULT_KS, DEFAULT_TEMPERATURE, knn_classify, resolve_backend
from .options import EvalContext, add_checkpoint_args, add_data_args, add_runtime_args


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Weighted k-NN classification (DINO protocol: cosine similarity, weights exp(sim/T)) "
                          "of frozen features of the train split, evaluated on the val split. Writes "
                          "<output-dir>/knn.json and prints a table.")
    add_checkpoint_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("kNN")
    g.add_argument("--k", type=int_range(1), nargs="+", default=list(DEFAULT_KS),
                   help="neighbour counts (default 10 20 100 200)")
    g.add_argument("--temperature", type=float_range(0, lo_open=True), default=DEFAULT_TEMPERATURE,
                   help="vote temperature T (default 0.07)")
    g.add_argument("--backend", default="auto", choices=("auto", "torch", "faiss"),
                   help="auto = faiss when faiss sees a GPU and the bank has >= 100k images, else torch; "
                        "both give identical results")
    g.add_argument("--chunk-size", type=int_range(1), default=None,
                   help="queries per similarity block of the torch back-end (default: sized to ~512 MiB)")
    add_runtime_args(parser, feature_cache=True)


def run(args: argparse.Namespace) -> int:
    ctx = EvalContext.from_args(args)
    train_ds, val_ds = ctx.splits()
    train_f, train_y = ctx.features("train", train_ds)
    val_f, val_y = ctx.features("val", val_ds)
    backend = resolve_backend(args.backend, train_f.shape[0])
    results = knn_classify(train_f, train_y, val_f, val_y, ks=args.k, temperature=args.temperature,
                           num_classes=len(train_ds.classes), backend=backend, chunk_size=args.chunk_size,
                           device=ctx.device)

    print(format_table(results))
    spec = ctx.data
    path = ctx.write_report(KNN_REPORT, {
        **ctx.weights, "format": ctx.info["format"], "epoch": ctx.info["epoch"], "feature": "pooled",
        "feature_dim": int(train_f.shape[1]), "data": spec.as_dict(),
        "train": {"split": spec.train_split, "images": int(train_f.shape[0])},
        "val": {"split": spec.val_split, "images": int(val_f.shape[0])},
        "num_classes": len(train_ds.classes), "temperature": args.temperature, "k": list(args.k),
        "backend": backend, "results": [r.as_dict() for r in results],
    })
    print(f"wrote {path}")
    return 0


def format_table(results: list) -> str:
    """A plain-text table: k, top-1, top-5 (``–`` when there are fewer than five classes)."""
    lines = [f"{'k':>5}  {'top1':>7}  {'top5':>7}"]
    for r in results:
        k = f"{r.k}" if r.k == r.k_used else f"{r.k}({r.k_used})"
        top5 = f"{r.top5:7.2f}" if r.top5 is not None else f"{'–':>7}"
        lines.append(f"{k:>5}  {r.top1:7.2f}  {top5}")
    return "\n".join(lines)
