"""augment.lungmask.feather_mask: a disk dilation and a Gaussian blur (kornia), exactly 0 away from the lungs and
exactly 1 deep inside them, against scikit-image's dilation and scipy's Gaussian."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import dilation, disk

from augment.lungmask import feather_mask


def blobs(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    """``bool (n, 1, size, size)``: a few random ellipses each (lung-like blobs), one touching the border."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, 1, size, size), bool)
    for i in range(n):
        for _ in range(2):
            cy, cx, ry, rx = g.uniform(0, size), g.uniform(0, size), g.uniform(3, 10), g.uniform(3, 8)
            masks[i, 0] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, 0, :6, 10:20] = True  # on the top edge
    return torch.from_numpy(masks)


def test_dilation_is_scikit_images_disk_dilation():
    masks = blobs()
    for r in (0, 1, 3, 6):
        expected = np.stack([dilation(m[0], disk(r)) for m in masks.numpy()])[:, None]
        assert torch.equal(feather_mask(masks, r, 0), torch.from_numpy(expected).float())


@pytest.mark.parametrize("dilate, sigma", [(3, 2.0), (0, 1.3), (5, 0.6)])
def test_feather_is_the_gaussian_of_the_dilated_mask_with_exact_zeros_and_ones(dilate, sigma):
    masks = blobs()
    w = feather_mask(masks, dilate, sigma)
    assert w.shape == masks.shape and w.dtype == torch.float32 and 0 <= w.min() and w.max() <= 1
    radius = math.ceil(3 * sigma)
    grown = feather_mask(masks, dilate, 0).numpy()[:, 0]
    for weight, g in zip(w.numpy()[:, 0], grown):
        # scipy: the same Gaussian cut at ±ceil(3σ), the edge replicated ('nearest')
        blurred = ndimage.gaussian_filter(g.astype(np.float64), sigma, mode="nearest", truncate=radius / sigma)
        np.testing.assert_allclose(weight, blurred, rtol=0, atol=1e-6)
        window = np.ones((2 * radius + 1,) * 2, bool)
        near = ndimage.binary_dilation(g, window)  # the window holds a pixel of the dilated mask
        deep = ndimage.binary_erosion(g, window, border_value=1)  # ... and nothing else
        assert (weight[~near] == 0).all() and (weight[near] > 0).all()
        assert (weight[deep] == 1).all() and (weight[near & ~deep] < 1).all()


def test_blending_leaves_everything_away_from_the_lungs_bit_for_bit():
    masks = blobs(seed=3)
    source, translated = torch.rand(masks.shape), torch.rand(masks.shape)
    w = feather_mask(masks, 2, 1.5)
    blended = w * translated + (1 - w) * source
    assert torch.equal(blended[w == 0], source[w == 0]) and torch.equal(blended[w == 1], translated[w == 1])


def test_lungs_on_the_border_stay_whole_there():
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., :12, :] = True  # the top 12 rows
    w = feather_mask(mask, 0, 2.0)
    assert (w[..., :6, :] == 1).all() and (w[..., 18:, :] == 0).all()


def test_masks_of_any_dtype_give_the_same_weights():
    masks = blobs()
    expected = feather_mask(masks, 2, 1.0)
    assert torch.equal(feather_mask(masks.to(torch.uint8), 2, 1.0), expected)
    warped = masks.float() * 0.6 + 0.2  # a bilinearly warped mask: lung where at least 0.5
    assert torch.equal(feather_mask(warped, 2, 1.0), expected)
    w64 = feather_mask(masks.double(), 2, 1.0)
    assert w64.dtype == torch.float64 and torch.allclose(w64, expected.double(), atol=1e-6)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        feather_mask(torch.zeros(2, 3, 8, 8), 1, 1.0)
    with pytest.raises(ValueError, match="whole number"):
        feather_mask(torch.zeros(1, 1, 8, 8), 1.5, 1.0)
    with pytest.raises(ValueError, match="blur_sigma >= 0"):
        feather_mask(torch.zeros(1, 1, 8, 8), 1, -1.0)
