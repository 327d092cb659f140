"""Backbone registry, heads and the three weight paths of create_model."""
import pytest
import torch
import torchvision

from classifier.backbones import list_backbones
from classifier.cam import GradCAM
from classifier.heads import LinearHead, RecurrentHead
from classifier.model import create_model
from foundation.errors import UserError


@pytest.mark.parametrize("name", list_backbones() + ["shufflenet_v2_x0_5"])
@pytest.mark.slow
def test_every_backbone_classifies_gray_images_and_has_a_cam_layer(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1).eval()
    size = 75 if name == "inception_v3" else 32
    x = torch.rand(2, 1, size, size)
    assert model(x).shape == (2, 3)
    with GradCAM(model) as cam:
        maps, target, prob = cam(x)
    assert maps.shape == (2, size, size) and 0 <= maps.min() and maps.max() <= 1
    assert torch.allclose(prob.sum(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("head", ["lstm", "gru"])
def test_recurrent_heads_read_the_feature_map_as_a_sequence(head):
    model = create_model("shallow", 3, head=head, width=8)
    assert isinstance(model.head, RecurrentHead)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    assert model.backbone.conv0.weight.grad.abs().sum() > 0


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown backbone 'resnet51'"):
        create_model("resnet51", 3)
    with pytest.raises(UserError, match="unknown head"):
        create_model("shallow", 3, head="transformer")
    with pytest.raises(UserError, match="no ImageNet weights"):
        create_model("shallow", 3, pretrained="imagenet")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("CXRGAN_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch"


def test_imagenet_weights_come_from_torch_home_with_rgb_kernels_summed(torch_home):
    reference = torchvision.models.squeezenet1_1(weights=None)
    target = torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = create_model("squeezenet1_1", 3, pretrained="imagenet")
    rgb = reference.features[0].weight
    assert model.backbone[0].weight.shape == (64, 1, 3, 3)
    assert torch.allclose(model.backbone[0].weight, rgb.sum(1, keepdim=True))
    assert torch.equal(model.backbone[12].expand3x3.weight, reference.features[12].expand3x3.weight)
    # a gray image g gives the response the RGB kernels give to (g, g, g)
    g = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.backbone[0](g), reference.features[0](g.expand(-1, 3, -1, -1)), atol=1e-5)


def test_missing_imagenet_file_offline_says_which_file_to_put_where(torch_home, monkeypatch):
    monkeypatch.setenv("CXRGAN_OFFLINE", "1")  # downloads: tests/test_weights.py
    with pytest.raises(UserError) as e:
        create_model("resnet18", 3, pretrained="imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "resnet18-f37072fd.pth" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "CXRGAN_OFFLINE=1 forbids" in msg and "cxrgan fetch-weights resnet18" in msg
    assert not (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()  # nothing downloaded


def test_local_state_dict_loads_the_backbone_and_ignores_the_head(tmp_path):
    source = create_model("shallow", 3, width=8)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = create_model("shallow", 5, pretrained=str(tmp_path / "w.pt"), width=8)
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    assert model.head.fc.out_features == 5


def test_local_torchvision_state_dict_is_adapted_to_gray(tmp_path):
    reference = torchvision.models.squeezenet1_1(weights=None)
    torch.save(reference.state_dict(), tmp_path / "tv.pt")
    model = create_model("squeezenet1_1", 3, pretrained=str(tmp_path / "tv.pt"))
    assert torch.allclose(model.backbone[0].weight, reference.features[0].weight.sum(1, keepdim=True))


def test_mismatched_state_dict_lists_the_missing_keys(tmp_path):
    state = create_model("shallow", 3, width=8).state_dict()
    del state["backbone.conv2.weight"], state["backbone.bn3.running_mean"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"missing keys bn3.running_mean, conv2.weight \(2 in all\)"):
        create_model("shallow", 3, pretrained=str(tmp_path / "partial.pt"), width=8)
    torch.save(create_model("shallow", 3, width=16).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(UserError, match="shape mismatch"):
        create_model("shallow", 3, pretrained=str(tmp_path / "wide.pt"), width=8)


def test_linear_head_is_pooling_then_linear():
    head = LinearHead(4, 2)
    feats = torch.rand(3, 4, 5, 5)
    assert torch.allclose(head(feats), feats.mean((2, 3)) @ head.fc.weight.T + head.fc.bias)


def test_timm_backbone_takes_gray_input_and_finds_its_cam_layer():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm:resnet10t", 3).eval()
    assert model.input_size == 176  # timm's default for resnet10t
    assert model.backbone.model.conv1[0].in_channels == 1
    x = torch.rand(2, 1, 64, 64)
    assert model.backbone(x).shape == (2, 512, 2, 2)  # forward_features: the last feature map
    with GradCAM(model) as cam:
        maps, _, _ = cam(x)
    assert maps.shape == (2, 64, 64)


@pytest.mark.parametrize("head", ["lstm", "gru"])
def test_timm_backbone_with_recurrent_heads(head):
    pytest.importorskip("timm")
    model = create_model("timm:mobilenetv3_small_050", 3, head=head)
    assert isinstance(model.head, RecurrentHead)
    model(torch.rand(2, 1, 64, 64)).sum().backward()
    assert model.backbone.model.conv_stem.weight.grad.abs().sum() > 0


def test_timm_state_dict_is_adapted_to_gray_and_its_classifier_ignored(tmp_path):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # RGB, with its fc
    torch.save(reference.state_dict(), tmp_path / "timm.pt")
    model = create_model("timm:resnet10t", 3, pretrained=str(tmp_path / "timm.pt"))
    rgb = reference.conv1[0].weight
    assert torch.allclose(model.backbone.model.conv1[0].weight, rgb.sum(1, keepdim=True))
    assert torch.equal(model.backbone.model.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    # the same file as ImageNet weights under $TORCH_HOME/hub/checkpoints/timm
    home = tmp_path / "torch"
    (home / "hub" / "checkpoints" / "timm").mkdir(parents=True)
    (tmp_path / "timm.pt").rename(home / "hub" / "checkpoints" / "timm" / "resnet10t.pth")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TORCH_HOME", str(home))
        model = create_model("timm:resnet10t", 3, pretrained="imagenet")
    assert torch.equal(model.backbone.model.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)


def test_timm_imagenet_without_a_local_file_offline_refuses_and_says_where(torch_home, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        create_model("timm:resnet10t", 3, pretrained="imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(torch_home / "hub" / "checkpoints" / "timm" / "resnet10t.safetensors") in msg
    assert "huggingface.co/timm/resnet10t" in msg and "HF_HUB_OFFLINE=1 forbids" in msg
    assert not (torch_home / "hub" / "checkpoints" / "timm").exists()  # nothing downloaded


def test_timm_names_unknown_or_not_convolutional_are_user_errors():
    pytest.importorskip("timm")
    with pytest.raises(UserError, match="unknown timm model 'resnet51'"):
        create_model("timm:resnet51", 3)
    with pytest.raises(UserError, match="not a convolutional feature map"):
        create_model("timm:test_vit", 3)


def test_timm_backbone_without_timm_says_how_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(UserError) as e:
        create_model("timm:xception", 3)
    assert str(e.value) == ("backbone 'timm:xception' needs the timm package; "
                            'install it with pip install -e ".[timm]"')


def test_config_accepts_timm_names_and_still_rejects_unknown_ones():
    from classifier.config import ModelConfig
    ModelConfig(backbone="timm:inception_resnet_v2").check()
    with pytest.raises(ValueError, match="timm:<any timm model>"):
        ModelConfig(backbone="resnet51").check()
