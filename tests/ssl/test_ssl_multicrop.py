"""MultiCropWrapper: same result as per-crop calls, one backbone call per distinct resolution."""

import torch
from torch import nn

from container_ssl.ssl.dino import MultiCropWrapper


def _model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 5))
    return MultiCropWrapper(backbone, head).eval()


def test_grouped_equals_per_crop_and_counts_calls():
    model = _model()
    calls = []
    model.backbone.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(3)]
    with torch.no_grad():
        out = model(crops)
        assert calls == [(8, 3, 32, 32), (12, 3, 16, 16)]
        expected = torch.cat([model.head(model.backbone(c)) for c in crops])
    assert out.shape == (20, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_non_consecutive_sizes_and_single_tensor():
    model = _model()
    calls = []
    model.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[-1]))
    crops = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 24, 24), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        out = model(crops)
        assert calls == [16, 24, 16]  # only consecutive crops are grouped, the order is kept
        torch.testing.assert_close(out, torch.cat([model.head(model.backbone(c)) for c in crops]))
        single = model(crops[0])
    torch.testing.assert_close(single, out[:2])
