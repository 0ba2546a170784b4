"""``container-ssl export``: the pretrained backbone as a timm model (safetensors + config) and ONNX.

Why: a backbone is only useful once it leaves the run folder. The export holds the backbone alone (no DINO
head, no optimiser) under timm's own key names, with the timm pretrained config that rebuilds the same
shapes (``model_args``: image size, patch size / stem stride, pooling) and the preprocessing the run used
(``input_size``, ``mean``, ``std``, ``crop_pct``), written by timm's own ``save_for_hf`` so any timm user
can load it (:func:`container_ssl.load_pretrained` does it in one call). ``--onnx`` adds ``model.onnx``
with a dynamic batch axis, checked with onnxruntime on the CPU before it is kept.

Files are written to a temporary folder next to ``--out`` and renamed into place, so an interrupted or
refused export never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from timm.models import save_for_hf
from torch import nn

from .argtypes import int_range
from .errors import UserError
from .eval.backbone import load_backbone, preprocessing
from .eval.options import add_checkpoint_args
from .eval.transforms import IMAGENET_MEAN, IMAGENET_STD, default_crop_ratio
from .pretrained import CONFIG_NAME, WEIGHTS_NAME, load_pretrained

__all__ = ["ONNX_NAME", "ONNX_TOLERANCE", "check_onnx", "export_backbone", "export_onnx"]

ONNX_NAME = "model.onnx"
ONNX_TOLERANCE = 1e-4  # max abs difference to PyTorch before an ONNX file is refused


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a pretrained backbone: <out>/model.safetensors + config.json (loadable with "
                          "timm.create_model or container_ssl.load_pretrained), and with --onnx <out>/model.onnx.")
    add_checkpoint_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (checked with onnxruntime)")
    parser.add_argument("--img-size", type=int_range(1), default=None,
                        help="input size recorded in the config and used by ONNX; default: the run's global crop size")
    parser.add_argument("--opset", type=int_range(1), default=18, help="ONNX opset (default 18)")


def run(args: argparse.Namespace) -> int:
    if args.onnx:
        _require_onnx()
    net, info = load_backbone(args.checkpoint, args.checkpoint_key, args.model, img_size=args.img_size,
                              patch_size=args.patch_size)
    img_size, mean, std = preprocessing(info, args.img_size)
    written = export_backbone(net, args.out, img_size, mean=mean, std=std, onnx=args.onnx, opset=args.opset)
    for path in written:
        print(f"wrote {path}")
    return 0


def export_backbone(net: nn.Module, out: str | os.PathLike, img_size: int, mean: Any = None, std: Any = None,
                    onnx: bool = False, opset: int = 18) -> list[Path]:
    """Write ``model.safetensors`` + ``config.json`` (and ``model.onnx``) for a ``num_classes=0`` backbone.

    The written files are loaded back through timm (and onnxruntime) and compared with ``net`` before they
    replace anything in ``out``.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create export folder {out}: {e.strerror or e}") from None
    net = net.eval().cpu()
    data_config = {"input_size": (3, img_size, img_size), "mean": tuple(mean or IMAGENET_MEAN),
                   "std": tuple(std or IMAGENET_STD), "crop_pct": default_crop_ratio(img_size),
                   "interpolation": "bicubic"}
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        save_for_hf(net, str(tmp), safe_serialization=True, data_config=data_config)
        _drop_num_classes_arg(tmp / CONFIG_NAME)
        x = _probe_input(img_size)
        with torch.no_grad():
            want = net(x)
            got = load_pretrained(tmp)(x)
        diff = float((want - got).abs().max())
        if not diff <= 1e-5:
            raise UserError(f"the exported weights reload through timm with a max abs difference of {diff:.3g} "
                            "in the pooled features (> 1e-5); nothing was written")
        names = [WEIGHTS_NAME, CONFIG_NAME]
        if onnx:
            export_onnx(net, tmp / ONNX_NAME, img_size, opset=opset)
            names.append(ONNX_NAME)
        for name in names:
            os.replace(tmp / name, out / name)
        return [out / name for name in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_onnx(net: nn.Module, path: str | os.PathLike, img_size: int, opset: int = 18) -> float:
    """Write ``net`` as ONNX (input ``images`` ``[batch, 3, H, W]``, output ``features``), batch axis dynamic.

    Returns the max abs difference to PyTorch on a batch of another size than the traced one; raises
    :class:`UserError` (and removes the file) above :data:`ONNX_TOLERANCE`.
    """
    _require_onnx()
    path = Path(path)
    net = net.eval().cpu()
    example = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    try:
        torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:  # exporter errors: keep one line
        path.unlink(missing_ok=True)
        raise UserError(f"ONNX export of {type(net).__name__} failed: {str(e).splitlines()[0][:200]}") from None
    diff = check_onnx(net, path, img_size)
    print(f"onnx check (onnxruntime CPU vs PyTorch, batch 3): max abs difference {diff:.3g}")
    if not diff <= ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        raise UserError(f"{path.name} differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE}); the file was not "
                        "written; try another --opset")
    return diff


def check_onnx(net: nn.Module, path: str | os.PathLike, img_size: int) -> float:
    """Max abs difference of onnxruntime (CPU) and PyTorch on a seeded batch of 3 images."""
    import onnxruntime as ort

    x = _probe_input(img_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = net(x)
    if tuple(got.shape) != tuple(want.shape):
        return float("inf")
    return float((torch.from_numpy(got) - want).abs().max())


def _drop_num_classes_arg(path: Path) -> None:
    """Keep ``num_classes`` out of ``model_args`` (it stays at the top level): the documented call
    ``timm.create_model(arch, ..., num_classes=0, **model_args)`` would otherwise pass it twice."""
    cfg = json.loads(path.read_text())
    cfg.get("model_args", {}).pop("num_classes", None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _probe_input(img_size: int) -> torch.Tensor:
    return torch.randn(3, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"--onnx needs the '{e.name}' package; install the export extra: "
                        "pip install 'container-ssl[export]' (onnx, onnxruntime)") from None
