"""Forward and backward of every registered backbone in bf16 autocast: finite and close to fp32.

Reference: the same model, weights and input in fp32 on the same device. bf16 keeps 8 bits of mantissa
(relative rounding ~4e-3 per operation), and the error grows with depth and with the reductions of
attention and normalisation. Measured on the CPU (batch 4, relative L2 error of features / gradients):
Container-Light nano and tiny 1.0-1.4% / 3.3-4.5% at 32 and 224 px; Container-Light-S at 32 px with stem
stride 2 1.8-2.8% / 21%, its 1x1 last stage leaving BatchNorm only 4 values per channel, which amplifies
rounding in the backward (the tests use batch 8 and the CIFAR config's stride 1, hence a 4x4 last stage).
The tolerances (5% features, 30% gradients) sit above that, while a real precision bug (a layer run in
fp16 without scaling, an overflowing softmax, a norm computed in bf16) shows up as non-finite values or
as features tens of percent off.
"""

from __future__ import annotations

import pytest
import torch

from container_ssl.models.factory import backbone_names, create_backbone

from .conftest import test_device

pytestmark = pytest.mark.cuda

FEATURE_RTOL, GRAD_RTOL, BATCH = 0.05, 0.30, 8
# (global, local) crop sizes and the DeiT patch / Container stem stride: the ImageNet and the CIFAR presets
SIZES = {"imagenet": ((224, 96), {"deit": 16, "container": 4}), "cifar": ((32, 16), {"deit": 4, "container": 1})}
CASES = [(name, preset) for name in backbone_names() for preset in SIZES
         if not (test_device().type == "cpu" and preset == "imagenet" and name.endswith("small"))]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _forward_backward(model: torch.nn.Module, images: list[torch.Tensor], proj: torch.Tensor,
                      dtype: torch.dtype | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pooled features of every crop size and the gradient of a fixed random projection of them."""
    model.zero_grad(set_to_none=True)
    feats = []
    with torch.autocast(images[0].device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for x in images:
            feats.append(model(x))
    loss = sum((f.float() * proj).sum() for f in feats)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [f.detach().float() for f in feats], grads


@pytest.mark.parametrize("name,preset", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_bf16_forward_backward_close_to_fp32(name, preset, device):
    (g, l_size), patch = SIZES[preset]
    family = "deit" if name.startswith("deit") else "container"
    torch.manual_seed(0)
    model = create_backbone(name, img_size=g, patch_size=patch[family]).to(device).train()
    images = [torch.randn(BATCH, 3, s, s, device=device) for s in (g, l_size)]
    proj = torch.randn(BATCH, model.num_features, device=device)

    ref_feats, ref_grads = _forward_backward(model, images, proj, None)
    feats, grads = _forward_backward(model, images, proj, torch.bfloat16)

    assert all(torch.isfinite(f).all() for f in feats) and torch.isfinite(grads).all()
    assert grads.abs().sum() > 0
    for size, f, r in zip((g, l_size), feats, ref_feats):
        assert f.shape == (BATCH, model.num_features)
        assert _rel(f, r) < FEATURE_RTOL, f"{name} {size}px: bf16 features {100 * _rel(f, r):.2f}% off fp32"
    assert _rel(grads, ref_grads) < GRAD_RTOL, f"{name}: bf16 gradients {100 * _rel(grads, ref_grads):.2f}% off fp32"


if __name__ == "__main__":  # print the measured errors: python -m tests.gpu.test_models_bf16 cuda [cifar|imagenet]
    import sys
    dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    for name, preset in [c for c in CASES if len(sys.argv) < 3 or c[1] == sys.argv[2]][int(sys.argv[3]) if len(sys.argv) > 3 else 0:]:
        (g, l_size), patch = SIZES[preset]
        torch.manual_seed(0)
        m = create_backbone(name, img_size=g, patch_size=patch["deit" if name.startswith("deit") else "container"])
        m = m.to(dev).train()
        ims = [torch.randn(BATCH, 3, s, s, device=dev) for s in (g, l_size)]
        pr = torch.randn(BATCH, m.num_features, device=dev)
        rf, rg = _forward_backward(m, ims, pr, None)
        f, gr = _forward_backward(m, ims, pr, torch.bfloat16)
        print(name, preset, [round(100 * _rel(a, b), 2) for a, b in zip(f, rf)], round(100 * _rel(gr, rg), 2), flush=True)
