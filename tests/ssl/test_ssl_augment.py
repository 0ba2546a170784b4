"""Multi-crop augmentation back-ends: shapes, dtypes, identity settings, determinism, config validation."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import v2

from container_ssl.config import AugConfig
from container_ssl.errors import UserError
from container_ssl.eval.transforms import EvalTransform
from container_ssl.ssl.augment import (
    MultiCropTransform,
    blur_kernel_size,
    denormalize,
)
from container_ssl.ssl.augment_gpu import BoxAndResize, BoxedCanvas, KorniaMultiCrop
from container_ssl.ssl.loader import collate_views

MEAN, STD = AugConfig().mean, AugConfig().std


def _cfg(**kw):
    return AugConfig(**{"global_size": 32, "local_size": 16, "n_local": 3, **kw})


def _identity_cfg(**kw):
    return _cfg(global_scale=[1.0, 1.0], local_scale=[1.0, 1.0], flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                blur_p=[0.0, 0.0, 0.0], solarize_p=0.0, **kw)


def _smooth_images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    smooth = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8)


def _normalised_resize(x, size):
    y = v2.functional.resize(x, [size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.functional.normalize(y.float() / 255, MEAN, STD)


def test_cpu_shapes_and_dtypes():
    t = MultiCropTransform(_cfg())
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for image in (pil, pil.convert("L"), v2.functional.pil_to_tensor(pil)):
        crops = t(image)
        assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
        assert all(type(c) is torch.Tensor and c.dtype == torch.float32 for c in crops)


def test_gpu_backend_shapes_dtypes_and_independent_draws():
    aug = KorniaMultiCrop(OmegaConf.structured(_cfg()))  # the OmegaConf node works as well as the dataclass
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    for batch in (x, x.float() / 255):
        crops = aug(batch)
        assert [tuple(c.shape) for c in crops] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
        assert all(c.dtype == torch.float32 for c in crops)
    assert not torch.allclose(crops[0], crops[1])
    assert not torch.allclose(crops[2], crops[3])
    same = KorniaMultiCrop(_cfg())(x[:1].expand(4, -1, -1, -1))  # one image 4 times: 4 different crops
    assert not torch.allclose(same[2][0], same[2][1])


def test_seeded_runs_are_reproducible():
    x = _smooth_images(3, 32)
    aug, cpu = KorniaMultiCrop(_cfg()), MultiCropTransform(_cfg())
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append((aug(x), cpu(x[0])))
    for a, b in zip(outs[0][0] + outs[0][1], outs[1][0] + outs[1][1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source", [48, 24])  # downscale (anti-aliased) and upscale
def test_no_augmentation_gives_plain_resize(source):
    x = _smooth_images(6, source)
    cfg = _identity_cfg()
    cpu = MultiCropTransform(cfg)
    aug = KorniaMultiCrop(cfg)
    gpu_crops = aug(x)
    for i in range(len(x)):
        cpu_crops = cpu(x[i])
        for view, size in enumerate([32, 32, 16, 16, 16]):
            ref = _normalised_resize(x[i], size)
            torch.testing.assert_close(cpu_crops[view], ref, rtol=0, atol=1e-5)
            err = (denormalize(gpu_crops[view][i], MEAN, STD) - denormalize(ref, MEAN, STD)).abs().mean()
            assert err < 1e-2, (view, float(err))


def test_gpu_backend_is_exact_when_no_resampling_is_needed():
    x = _smooth_images(2, 32)
    crops = KorniaMultiCrop(_identity_cfg())(x)
    expected = v2.functional.normalize(x.float() / 255, MEAN, STD)
    torch.testing.assert_close(crops[0], expected, rtol=0, atol=1e-5)


def test_blur_kernel_sizes():
    assert [blur_kernel_size(s) for s in (224, 96, 32, 16, 8)] == [23, 11, 3, 3, 3]


@pytest.mark.parametrize("change", [{"flip_p": 1.5}, {"global_scale": [0.9, 0.2]}, {"blur_p": [1.0, 0.1]},
                                    {"local_size": 0}, {"std": [0.2, 0.0, 0.2]},
                                    {"jitter": [0.4, 0.4, 0.2, 0.9]}])
def test_bad_settings_raise_user_error(change):
    cfg = dataclasses.replace(_cfg(), **change)
    for backend in (MultiCropTransform, KorniaMultiCrop, BoxAndResize):
        with pytest.raises(UserError):
            backend(cfg)


def test_an_interpolation_outside_its_enum_is_a_value_error():
    """A config file or override with it fails at load time (tests/test_config_checks.py); an AugConfig built
    by hand bypasses the schema and gets the Interpolation enum's own ValueError."""
    cfg = dataclasses.replace(_cfg(), interpolation="lanczos")
    for backend in (MultiCropTransform, KorniaMultiCrop, BoxAndResize):
        with pytest.raises(ValueError, match="'lanczos' is not a valid Interpolation"):
            backend(cfg)


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="uint8"):
        MultiCropTransform(_cfg())(torch.rand(3, 8, 8))
    with pytest.raises(UserError, match=r"\[B, 3, H, W\]"):
        KorniaMultiCrop(_cfg())(torch.rand(3, 8, 8))


def test_eval_transform_and_denormalize():
    x = _smooth_images(1, 32)[0]
    out = EvalTransform(32, mean=MEAN, std=STD)(x)
    torch.testing.assert_close(out, v2.functional.normalize(x.float() / 255, MEAN, STD))  # no resampling
    torch.testing.assert_close(denormalize(out, MEAN, STD), x.float() / 255)
    pil = Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8))
    assert tuple(EvalTransform(32, resize_to=36)(pil).shape) == (3, 32, 32)
    with pytest.raises(UserError):
        EvalTransform(32, resize_to=24)


def test_loader_side_draws_boxes_on_the_original_image():
    x = _smooth_images(1, 32)[0]
    out = BoxAndResize(_cfg())(x)
    assert torch.equal(out.images, x)  # already global_size: no resampling
    pil = Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8))
    draws = []
    for _ in range(2):
        torch.manual_seed(5)  # the trainer seeds every sample like this: the boxes must follow the seed
        draws.append(BoxAndResize(_cfg(base_size=48))(pil))
    out = draws[0]
    assert out.images.dtype == torch.uint8 and tuple(out.images.shape) == (3, 48, 48)
    assert out.boxes.dtype == torch.float32 and tuple(out.boxes.shape) == (2 + 3, 4)
    assert torch.equal(out.boxes, draws[1].boxes)
    # the same draws as the CPU back-end's crops of the original 60 x 40 image, as fractions of it
    torch.manual_seed(5)
    crop = MultiCropTransform(_cfg()).global1.transforms[0]
    p = crop.make_params([v2.functional.pil_to_tensor(pil)])
    torch.testing.assert_close(out.boxes[0], torch.tensor([p["left"] / 60, p["top"] / 40, p["width"] / 60,
                                                           p["height"] / 40]))
    left, top, w, h = out.boxes.unbind(1)
    assert bool((left >= 0).all() and (top >= 0).all() and (left + w <= 1 + 1e-6).all()
                and (top + h <= 1 + 1e-6).all())


def test_collated_canvas_batch_travels_as_one_object():
    """default_collate keeps the named tuple (so train_step's ``.to(device)`` and the module accept it)."""
    batch = [(BoxAndResize(_cfg())(im), 0) for im in _smooth_images(3, 40)]
    views, _, skipped = collate_views(batch + [None])
    assert isinstance(views, BoxedCanvas) and len(skipped) == 1
    assert tuple(views.images.shape) == (3, 3, 32, 32) and tuple(views.boxes.shape) == (3, 5, 4)
    views = views.to("cpu", non_blocking=True)
    crops = KorniaMultiCrop(_cfg())(views)
    assert [tuple(c.shape) for c in crops] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 3
    with pytest.raises(UserError, match="n_local"):  # a module built for other settings than the loader
        KorniaMultiCrop(_cfg(n_local=2))(views)


@pytest.mark.parametrize("height, width", [(48, 72), (72, 48), (24, 96), (40, 40)])
def test_same_seed_gives_the_same_crop_in_both_backends(height, width):
    """Non-square images: under the same per-sample seed the batched back-end cuts the CPU back-end's boxes.

    Both draw the boxes with the same torchvision rule in the same order, so with the colour steps off the
    crops differ only by resampling (the batched path goes through the ``base_size`` canvas): a centre-square
    crop, or a box misplaced by a canvas mapping error, differs by far more than the 0.02 allowed.
    """
    g = torch.Generator().manual_seed(1)
    low = torch.rand(6, 3, 6, 6, generator=g)
    x = (F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False) * 255).round()
    x = x.to(torch.uint8)
    cfg = _cfg(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=[0.0, 0.0, 0.0], solarize_p=0.0, base_size=64)
    cpu, loader = MultiCropTransform(cfg), BoxAndResize(cfg)
    cpu_crops, loaded = [], []
    for i, im in enumerate(x):
        torch.manual_seed(i)
        cpu_crops.append(cpu(im))
        torch.manual_seed(i)
        loaded.append((loader(im), 0))
    gpu_crops = KorniaMultiCrop(cfg)(collate_views(loaded)[0])
    errors = [float((denormalize(gpu_crops[view][i], MEAN, STD) - denormalize(crop, MEAN, STD)).abs().mean())
              for i in range(len(x)) for view, crop in enumerate(cpu_crops[i])]
    assert max(errors) < 0.02, errors


def test_loader_boxes_follow_the_per_sample_seed_in_workers():
    """Exact resume needs the loader's box draws to depend on (seed, epoch, index) only, not on the worker,
    the batch or what ran before: the same items through a worker, in another order, give the same boxes."""
    from torch.utils.data import DataLoader

    from container_ssl.ssl.sampling import SeededViews

    images = [(im, 0) for im in _smooth_images(6, 40)]
    views = SeededViews(images, seed=3, transform=BoxAndResize(_cfg(base_size=32)))
    keys = [(1, i) for i in range(6)]
    direct = {k: views[k][0] for k in keys}
    loader = DataLoader(views, batch_size=2, sampler=keys[::-1], num_workers=1, collate_fn=collate_views)
    seen = 0
    for batch, _, _ in loader:
        for j in range(2):
            key = keys[::-1][seen]
            assert torch.equal(batch.boxes[j], direct[key].boxes) and torch.equal(batch.images[j], direct[key].images)
            seen += 1
    assert seen == 6
    assert not torch.equal(direct[(1, 0)].boxes, views[(2, 0)][0].boxes)  # another epoch draws other boxes
