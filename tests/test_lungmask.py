"""The lung box and the Maguolo–Nanni masking controls, on constructed masks with known answers."""
import numpy as np
import pytest
import torch

from augment.lungmask import HIDDEN_VALUE, apply_lung_mask, lung_box


def test_the_box_is_the_square_around_the_lungs_grown_by_the_margin():
    mask = np.zeros((100, 100), bool)
    mask[30:50, 20:60] = True  # 20 tall, 40 wide, centre (40, 40)
    assert lung_box(mask, 0.0) == (20, 20, 40, 40)
    assert lung_box(mask, 0.25) == (10, 10, 60, 60)


def test_the_box_stays_inside_the_image_and_an_empty_mask_has_none():
    mask = np.zeros((64, 80), bool)
    mask[0:10, 70:80] = True  # corner: the grown square must shift inwards
    top, left, h, w = lung_box(mask, 0.5)
    assert (h, w) == (20, 20) and top == 0 and left + w == 80
    mask[:] = True
    assert lung_box(mask, 0.2) == (0, 8, 64, 64)  # shrunk to the shorter side, centred
    assert lung_box(np.zeros((8, 8), bool), 0.1) is None


@pytest.mark.parametrize("mode", ["hide-lungs", "keep-lungs"])
def test_masking_hides_exactly_one_side_of_the_mask(mode):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=g)
    masks = torch.rand(3, 1, 16, 16, generator=g) > 0.5
    out = apply_lung_mask(images, masks, mode)
    hidden = masks if mode == "hide-lungs" else ~masks
    assert (out[hidden] == HIDDEN_VALUE).all() and torch.equal(out[~hidden], images[~hidden])
    assert torch.equal(apply_lung_mask(images, masks, "none"), images)
    with pytest.raises(ValueError, match="do not match"):
        apply_lung_mask(images, masks[:, :, :8], mode)
