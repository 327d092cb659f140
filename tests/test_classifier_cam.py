"""CAM methods: shapes and range, hooks released, fallback for recurrent heads, and that Grad-CAM
finds the planted patch that decides the class."""
import pytest
import torch

from classifier.cam import CAM, GradCAM, GradCAMPlusPlus, cam_method, faithfulness
from classifier.model import create_model
from foundation.errors import UserError


def planted(n, gen):
    """Noise images; class 1 carries a bright 8x8 patch somewhere. Returns x, y and the patch masks."""
    x = 0.3 + 0.1 * torch.rand(n, 1, 32, 32, generator=gen)
    y = torch.arange(n) % 2
    mask = torch.zeros(n, 32, 32, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, 24, (2,), generator=gen).tolist()
        if y[i] == 1:
            x[i, 0, r:r + 8, c:c + 8] = 1.0
        mask[i, r:r + 8, c:c + 8] = True
    return x, y, mask


@pytest.fixture(scope="module")
def patch_model():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create_model("shallow", 2, width=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        x, y, _ = planted(32, gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", [CAM, GradCAM, GradCAMPlusPlus])
def test_maps_light_up_the_planted_patch(patch_model, method):
    x, y, mask = planted(16, torch.Generator().manual_seed(1))
    x, mask = x[y == 1], mask[y == 1]
    with method(patch_model) as cam:
        maps, target, prob = cam(x)
    assert maps.shape == (8, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert (target == 1).all() and (prob[:, 1] > 0.9).all()
    inside = (maps * mask).sum((1, 2)) / mask.sum((1, 2))
    outside = (maps * ~mask).sum((1, 2)) / (~mask).sum((1, 2))
    assert (inside > 2 * outside).float().mean() >= 0.75


def test_named_class_and_hooks_released(patch_model):
    x = torch.rand(3, 1, 32, 32)
    cam = GradCAM(patch_model)
    with cam:
        _, target, _ = cam(x, target=0)
    assert target.tolist() == [0, 0, 0]
    assert not patch_model.backbone._forward_hooks
    with pytest.raises(RuntimeError, match="with"):
        cam(x)


def test_faithfulness_of_a_map_keeping_everything_is_no_drop(patch_model):
    x, _, _ = planted(8, torch.Generator().manual_seed(2))
    with GradCAM(patch_model) as cam:
        maps, target, prob = cam(x)
    f = faithfulness(patch_model, x, torch.ones_like(maps), target, prob)
    assert f["average_drop_pct"] == pytest.approx(0, abs=1e-3)
    g = faithfulness(patch_model, x, torch.zeros_like(maps), target, prob)
    assert g["average_drop_pct"] > 0


def test_cam_on_a_recurrent_head_falls_back_to_gradcam(capsys):
    model = create_model("shallow", 3, head="gru", width=8)
    assert isinstance(cam_method("cam", model), GradCAM)
    assert "Grad-CAM is used" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown CAM method"):
        cam_method("scorecam", model)
