"""Device batches and kornia augmentation, run on the CPU."""
from __future__ import annotations

import pytest
import torch

from augment.gpu import AugmentConfig, DeviceImages, Resize, build_augment, epoch_batches, resize_and_crop


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
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), degrees=0, translate=0, brightness=0,
                        contrast=0, gamma=(1.0, 1.0), hflip=1.0)
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
        found = [(r, c) for r in range(5) for c in range(5) if torch.equal(out[i], big[i, :, r:r + 32, c:c + 32])]
        assert found, f"image {i} is not a crop of its enlarged input"
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # a random place per image
    assert resize_and_crop(32, 32)(x) is x  # load_scale 1: unchanged
