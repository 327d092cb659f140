"""CycleGAN building blocks: the paper's architecture (shapes, parameter counts, init), losses,
image pool and lr schedule."""
import pytest
import torch

from augment.config import load_config
from augment.errors import UserError
from cyclegan.config import GanConfig, ModelConfig
from cyclegan.losses import lsgan_loss
from cyclegan.model import linear_decay
from cyclegan.networks import Generators, PatchDiscriminator, ResnetGenerator
from cyclegan.pool import ImagePool


pytestmark = pytest.mark.usefixtures("one_thread")


def conv(c_in, c_out, k):
    """Weights plus biases of a k x k (transposed) convolution."""
    return c_in * c_out * k * k + c_out


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_generator_has_the_hand_counted_parameters():
    # c7s1-64, d128, d256, 9 x R256 (two 3x3 convs each), u128, u64, c7s1-1; instance norm has none.
    expected = (conv(1, 64, 7) + conv(64, 128, 3) + conv(128, 256, 3) + 9 * 2 * conv(256, 256, 3)
                + conv(256, 128, 3) + conv(128, 64, 3) + conv(64, 1, 7))
    assert expected == 11_365_633
    assert n_params(ResnetGenerator(ngf=64, n_blocks=9)) == expected


def test_paper_discriminator_has_the_hand_counted_parameters():
    # C64 (no norm), C128, C256, C512 (stride 1), 1-channel output; all 4x4.
    expected = conv(1, 64, 4) + conv(64, 128, 4) + conv(128, 256, 4) + conv(256, 512, 4) + conv(512, 1, 4)
    assert expected == 2_762_689
    assert n_params(PatchDiscriminator(ndf=64, n_layers=3)) == expected


def test_code_defaults_are_the_paper_configuration():
    cfg = GanConfig()
    assert (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks, cfg.model.n_layers_d) == (64, 64, 9, 3)
    t = cfg.train
    assert (t.lambda_cycle, t.lambda_identity, t.pool_size, t.lr, t.beta1, t.batch_size) == (10, 0.5, 50, 2e-4, 0.5, 1)


def test_shapes_one_channel_in_and_out():
    g = ResnetGenerator(ngf=8, n_blocks=2)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = g(x)
    assert y.shape == (2, 1, 32, 32) and y.abs().max() <= 1
    # a 70x70 PatchGAN maps 256x256 to 30x30 scores; 64x64 to 6x6
    assert PatchDiscriminator(ndf=8)(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
    assert PatchDiscriminator(ndf=8)(torch.zeros(3, 1, 64, 64)).shape == (3, 1, 6, 6)


def test_init_is_normal_with_std_002():
    gens = Generators(ModelConfig(ngf=16, n_blocks=2))
    w = torch.cat([m.weight.flatten() for m in gens.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert all((m.bias == 0).all() for m in gens.modules() if isinstance(m, torch.nn.Conv2d))


def test_batched_identity_pass_equals_separate_calls():
    gens = Generators(ModelConfig(ngf=8, n_blocks=1))
    a, b = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    out = gens(a, b)
    torch.testing.assert_close(out["fake_b"], gens.ab(a))
    torch.testing.assert_close(out["idt_b"], gens.ab(b))
    torch.testing.assert_close(out["rec_a"], gens.ba(gens.ab(a)))


def test_lsgan_loss_targets():
    s = torch.full((2, 1, 4, 4), 0.25)
    assert lsgan_loss(s, True).item() == pytest.approx(0.5625)
    assert lsgan_loss(s, False).item() == pytest.approx(0.0625)


def test_image_pool_fills_then_swaps_half_and_round_trips():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: images pass through
    outs = torch.cat([pool.query(torch.full((1, 1, 1, 1), 100.0 + i)) for i in range(400)]).flatten()
    from_history = (outs < 100) | (outs != 100 + torch.arange(400.0))
    assert 0.4 < from_history.float().mean() < 0.6  # about half come from the history
    clone = ImagePool(4)
    clone.load_state_dict(pool.state_dict())
    state = torch.get_rng_state()
    a = pool.query(torch.full((3, 1, 1, 1), -1.0))
    torch.set_rng_state(state)
    assert torch.equal(clone.query(torch.full((3, 1, 1, 1), -1.0)), a)


def test_lr_is_constant_then_decays_linearly_to_zero():
    f = linear_decay(100, 0.5)
    assert f(0) == f(50) == 1.0
    assert f(75) == pytest.approx(0.5)
    assert f(100) == 0.0


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 4"):
        load_config(GanConfig, None, ["data.size=30"])
    with pytest.raises(UserError, match="domain"):
        load_config(GanConfig, None, ["train.domain_b=tuberculosis"])
