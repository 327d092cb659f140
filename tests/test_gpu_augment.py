"""Device batches (resident and streamed) and the one-warp augmentation, run on the CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from augment.batches import DeviceImages, StreamedImages, epoch_batches, fits_on_device
from augment.transforms import AugmentConfig, Resize, build_augment, draw_augment, resize_and_crop

STILL = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), degrees=0, translate=0, brightness=0, contrast=0,
             gamma=(1.0, 1.0), hflip=0.0)  # every change off


def _images(n=6, s=32):
    x = torch.zeros(n, 1, s, s)
    x[:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 0.8  # a bright square on black
    return x


@pytest.mark.parametrize("size", [32, 24])
def test_augment_shape_range_dtype(size):
    out = build_augment(AugmentConfig(), size)(_images())
    assert out.shape == (6, 1, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_augment_is_random_per_image_and_replayable():
    aug, x = build_augment(AugmentConfig(), 32), _images()
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])     # per image
    assert not torch.allclose(a, aug(x))      # per call


def test_disabled_augment_only_resizes():
    aug = build_augment(AugmentConfig(enabled=False), 16)
    assert isinstance(aug, Resize)
    x = _images()
    out = aug(x)
    assert out.shape == (6, 1, 16, 16)
    assert torch.allclose(out, torch.nn.functional.interpolate(x, size=16, mode="bilinear", antialias=True))
    assert build_augment(AugmentConfig(enabled=False), 32)(x) is x


def test_hflip_setting_flips():
    cfg = AugmentConfig(**{**STILL, "hflip": 1.0})
    x = torch.zeros(2, 1, 8, 8)
    x[..., :2] = 1
    assert torch.allclose(build_augment(cfg, 8)(x), x.flip(-1), atol=1e-5)


def test_device_images_get():
    images = torch.arange(5 * 4, dtype=torch.uint8).reshape(5, 1, 2, 2) * 12
    labels = torch.tensor([0, 1, 2, 1, 0])
    dev = DeviceImages(images, labels, "cpu")
    x, y = dev.get(torch.tensor([3, 0]))
    assert len(dev) == 5 and x.dtype == torch.float32 and x.shape == (2, 1, 2, 2)
    assert torch.allclose(x, images[[3, 0]].float() / 255) and torch.equal(y, labels[[3, 0]])
    assert torch.equal(images, torch.arange(20, dtype=torch.uint8).reshape(5, 1, 2, 2) * 12)  # source untouched


def test_epoch_covers_every_index_once():
    g = torch.Generator().manual_seed(0)
    batches = epoch_batches(10, 4, g, drop_last=False)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    full = epoch_batches(10, 4, g)
    assert [len(b) for b in full] == [4, 4] and len(set(torch.cat(full).tolist())) == 8


def test_epochs_are_shuffled_by_the_generator():
    a = epoch_batches(50, 10, torch.Generator().manual_seed(1))
    b = epoch_batches(50, 10, torch.Generator().manual_seed(1))
    c = epoch_batches(50, 10, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))
    assert torch.equal(torch.cat(epoch_batches(7, 3, torch.Generator(), shuffle=False, drop_last=False)),
                       torch.arange(7))


def test_tiny_sets():
    g = torch.Generator().manual_seed(0)
    assert epoch_batches(0, 4, g) == []
    (batch,) = epoch_batches(3, 8, g)
    assert batch.shape == (8,) and set(batch.tolist()) <= {0, 1, 2}
    assert sorted(torch.cat(epoch_batches(3, 8, g, drop_last=False)).tolist()) == [0, 1, 2]


def test_gan_jitter_only_enlarges_and_crops():
    """Zhu et al.'s jitter as the CycleGAN uses it: every output is a crop of the enlarged input,
    gray values untouched (no intensity jitter) and the sides kept (no flip); the place is random."""
    from cyclegan import GanConfig
    jitter = GanConfig().augment
    assert jitter.load_size(256) == 286 and jitter.load_size(32) == 36
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = resize_and_crop(32, 36)(x)
    big = Resize(36)(x)
    offsets = []
    for i in range(len(x)):
        found = [(r, c) for r in range(5) for c in range(5)
                 if torch.allclose(out[i], big[i, :, r:r + 32, c:c + 32], atol=1e-5)]
        assert found, f"image {i} is not a crop of its enlarged input"
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # a random place per image
    assert resize_and_crop(32, 32)(x) is x  # load_scale 1: unchanged


# ---------------------------------------------------------------- the one-warp augmentation
@pytest.mark.parametrize("size", [32, 16])
def test_a_config_that_changes_nothing_returns_the_resized_image_exactly(size):
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = build_augment(AugmentConfig(**STILL), size)(x)
    assert torch.equal(out, Resize(size)(x))
    assert torch.equal(x, torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)))  # input untouched


def test_intensity_changes_leave_the_input_untouched():
    x = torch.full((2, 1, 8, 8), 0.5)
    out = build_augment(AugmentConfig(**{**STILL, "brightness": 0.3}), 8)(x)
    assert (x == 0.5).all() and not torch.equal(out, x)


def test_a_planted_square_lands_where_the_sampled_affine_sends_it():
    """Each output pixel whose centre the sampled map sends well inside the square is bright, and each it
    sends well outside (or off the image) is black: the warp is the sampled map and nothing else."""
    s, size, n = 48, 40, 16
    x = torch.zeros(n, 1, s, s)
    x[:, :, 12:30, 18:34] = 0.8  # rows 12..29, columns 18..33
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), crop_ratio=(0.75, 1.33), degrees=30, translate=0.1, brightness=0,
                        contrast=0, gamma=(1.0, 1.0), hflip=0.5)
    aug = build_augment(cfg, size)
    torch.manual_seed(3)
    draw = draw_augment(cfg, n, "cpu")
    torch.manual_seed(3)
    out = aug(x)
    assert torch.equal(out, aug.apply(x, draw))  # forward draws exactly these parameters
    centres = (2 * torch.arange(size) + 1) / size - 1
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([u, v, torch.ones_like(u)], -1).view(-1, 3)  # (size², 3): x, y, 1
    src = (points @ draw.theta.transpose(1, 2) + 1) * s / 2 - 0.5      # (n, size², 2) source pixel coordinates
    col, row = src[..., 0], src[..., 1]
    inside = (col > 19) & (col < 32) & (row > 13) & (row < 28)
    outside = (col < 16.5) | (col > 35.5) | (row < 10.5) | (row > 31.5)
    values = out.view(n, -1)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert values[inside].min() > 0.79 and values[outside].max() < 0.01
    assert (draw.theta[:, 0, 0] < 0).any() and (draw.theta[:, 0, 0] > 0).any()  # flipped and not


def test_sampled_parameters_follow_the_config():
    """Monte Carlo: every parameter within its range and spread as drawn (no crop too large to fit)."""
    n = 20000
    cfg = AugmentConfig(crop_scale=(0.5, 0.75), crop_ratio=(0.8, 1.25), degrees=12, translate=0, hflip=0.3,
                        brightness=0.1, contrast=0.2, gamma=(0.8, 1.2))
    torch.manual_seed(0)
    d = draw_augment(cfg, n, "cpu")
    lin = d.theta[:, :, :2]
    w, h = lin[:, 0].norm(dim=1), lin[:, 1].norm(dim=1)                  # crop width and height, shares of the side
    area, ratio, det = w * h, w / h, torch.linalg.det(lin)
    assert area.min() >= 0.5 - 1e-5 and area.max() <= 0.75 + 1e-5 and abs(area.mean() - 0.625) < 0.005
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.25 + 1e-5
    assert abs(ratio.log().mean()) < 0.01                                # log ratio uniform and symmetric
    torch.testing.assert_close(det.abs(), area)
    assert abs((det < 0).float().mean() - 0.3) < 0.02                    # flips
    angle = torch.atan2(lin[:, 0, 1], lin[:, 0, 0].abs())
    assert angle.abs().max() <= math.radians(12) + 1e-5 and angle.abs().max() > math.radians(11.9)
    assert abs(angle.std() - math.radians(12) / math.sqrt(3)) < 0.005    # uniform in ± degrees
    assert (d.theta[:, :, 2].abs() <= 1 - torch.stack([w, h], 1) + 1e-5).all()  # the crop stays in the image
    for values, lo, hi in ((d.brightness, -0.1, 0.1), (d.contrast, 0.8, 1.2), (d.gamma, 0.8, 1.2)):
        assert values.min() >= lo and values.max() <= hi and abs(values.mean() - (lo + hi) / 2) < 0.01 * (hi - lo)


def test_sampled_shift_stays_within_translate():
    torch.manual_seed(0)
    d = draw_augment(AugmentConfig(**{**STILL, "translate": 0.1}), 5000, "cpu")
    shift = d.theta[:, :, 2]  # normalised units: the side is 2 long
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.abs().max() > 0.19
    torch.testing.assert_close(d.theta[:, :, :2], torch.eye(2).expand(5000, 2, 2))


def test_a_crop_ratio_that_never_fits_falls_back_to_the_widest_allowed_crop():
    torch.manual_seed(0)
    d = draw_augment(AugmentConfig(**{**STILL, "crop_ratio": (1.2, 1.5)}), 100, "cpu")
    torch.testing.assert_close(d.theta[:, :, :2], torch.tensor([[1.0, 0.0], [0.0, 1 / 1.2]]).expand(100, 2, 2))


def test_mask_follows_the_image_and_keeps_its_gray_values():
    cfg = AugmentConfig(degrees=20, translate=0.1, brightness=0.3, contrast=0.3, gamma=(0.5, 2.0))
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 1, 32, 32)
    aug = build_augment(cfg, 24)
    torch.manual_seed(0)
    image, warped = aug(x, mask)
    torch.manual_seed(0)
    assert torch.equal(image, aug(x))                                  # the mask changes nothing of the image
    torch.manual_seed(0)
    ones = aug(torch.ones_like(x), mask)[1]
    assert torch.equal(warped, ones) and warped.max() <= 1 and warped.min() < 0.5  # geometry only, corners black


def test_augmentation_never_waits_for_the_host(monkeypatch):
    """No value comes back to Python and no tensor is made from host data inside a call, so a CUDA graph
    can capture it."""
    aug = build_augment(AugmentConfig(hflip=0.5), 24)
    jitter = resize_and_crop(32, 36)
    x = torch.rand(4, 1, 32, 32)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync or host-to-device copy")

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):  # dtype changes are fine, device moves are not
        if "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args):
            refuse()
        return real_to(self, *args, **kwargs)

    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch, "tensor", refuse)
    monkeypatch.setattr(torch, "as_tensor", refuse)
    out, mask = aug(x, torch.ones_like(x))
    crop = jitter(x)
    monkeypatch.undo()
    assert out.shape == mask.shape == (4, 1, 24, 24) and crop.shape == x.shape


# ---------------------------------------------------------------- resident and streamed sets
def _image_set(n=9, s=8):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 1, s, s), dtype=np.uint8))
    return images, torch.arange(n) % 3


def test_streamed_batches_are_the_resident_ones():
    images, labels = _image_set()
    rows = torch.tensor([8, 1, 5, 3, 0, 7])
    resident, streamed = DeviceImages(images, labels, "cpu", rows), StreamedImages(images, labels, "cpu", rows)
    assert len(resident) == len(streamed) == 6 and streamed.images is images  # streamed: nothing copied
    order = torch.stack(epoch_batches(6, 2, torch.Generator().manual_seed(0)))
    a, b = resident.batches(order), streamed.batches(order)
    assert len(a) == len(b) == 3
    for pos in (1, 2, 0):  # in any order, as a resumed epoch starts midway
        (xa, ya), (xb, yb) = a[pos], b[pos]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, images[rows[order[pos]]].float() / 255) and torch.equal(ya, labels[rows[order[pos]]])
    idx = torch.tensor([5, 0])
    assert all(torch.equal(u, v) for u, v in zip(resident.get(idx), streamed.get(idx)))


def test_a_cache_share_of_zero_streams():
    assert fits_on_device(10**12, "cpu", 0.5) and not fits_on_device(1, "cpu", 0.0)


@pytest.mark.parametrize("package", ["classifier", "cyclegan"])
def test_a_cache_share_outside_0_to_1_is_refused(package):
    from classifier.config import ClassifierConfig
    from cyclegan import GanConfig
    from foundation.config import load_config
    from foundation.errors import UserError
    config = {"classifier": ClassifierConfig, "cyclegan": GanConfig}[package]
    with pytest.raises(UserError, match=r"train.device_cache_share .* \[0, 1\], got 1.5"):
        load_config(config, None, ["train.device_cache_share=1.5"])
    assert load_config(config, None, ["train.device_cache_share=0"]).train.device_cache_share == 0


# ---------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_batches_on_a_gpu_are_the_resident_ones():
    images, labels = _image_set(n=40, s=16)
    rows, dev = torch.arange(3, 40), torch.device("cuda")
    resident, streamed = DeviceImages(images, labels, dev, rows), StreamedImages(images, labels, dev, rows)
    order = torch.stack(epoch_batches(len(rows), 4, torch.Generator().manual_seed(0)))
    a, b = resident.batches(order), streamed.batches(order)
    for pos in [*range(len(a)), 3, 0, 1, 2]:  # in order (prefetched), then out of order
        (xa, ya), (xb, yb) = a[pos], b[pos]
        assert xb.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augmentation_is_captured_by_a_cuda_graph():
    """Capture fails on any host sync or host-to-device copy; each replay draws new parameters."""
    x = torch.rand(4, 1, 32, 32, device="cuda")
    augment, jitter = build_augment(AugmentConfig(hflip=0.5), 24), resize_and_crop(32, 36)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture, as torch.cuda.graphs asks
        augment(x), jitter(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, crop = augment(x), jitter(x)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out) and out.min() >= 0 and out.max() <= 1 and crop.shape == x.shape
