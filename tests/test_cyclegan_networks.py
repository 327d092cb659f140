"""CycleGAN building blocks: the paper's architecture (shapes, parameter counts, init, the biases that
cancel, the sub-pixel and resize upsamplings), losses, the device image pool and the lr schedule."""
import copy

import pytest
import torch
from torch import nn

from cyclegan.config import GanConfig, ModelConfig
from cyclegan.losses import lsgan_loss
from cyclegan.model import CycleGAN, decayed_lr
from cyclegan.networks import (Generators, PatchDiscriminator, ResnetGenerator, SubpixelConvTranspose2d,
                               drop_cancelled_biases, upsampling)
from cyclegan.pool import ImagePool
from foundation.config import load_config
from foundation.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def conv(c_in, c_out, k, bias=True):
    """Weights (plus biases) of a k x k (transposed) convolution."""
    return c_in * c_out * k * k + c_out * bias


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_generator_has_the_hand_counted_parameters():
    # c7s1-64, d128, d256, 9 x R256 (two 3x3 convs each), u128, u64, c7s1-1; instance norm has none, and
    # every conv but the last feeds one, so only the last has a bias (the paper's 11,365,633 less 5,248).
    expected = (conv(1, 64, 7, False) + conv(64, 128, 3, False) + conv(128, 256, 3, False)
                + 9 * 2 * conv(256, 256, 3, False) + conv(256, 128, 3, False) + conv(128, 64, 3, False)
                + conv(64, 1, 7))
    assert expected == 11_365_633 - 5_248
    assert n_params(ResnetGenerator(ngf=64, n_blocks=9)) == expected
    assert n_params(ResnetGenerator(ngf=64, n_blocks=9, upsample="subpixel")) == expected
    # a 3x3 convolution after the resize has as many weights as the transposed one, in another shape
    assert n_params(ResnetGenerator(ngf=64, n_blocks=9, upsample="resize")) == expected


def test_paper_discriminator_has_the_hand_counted_parameters():
    # C64 (no norm: keeps its bias), C128, C256, C512 (stride 1, normed: no bias), 1-channel output; all 4x4.
    expected = (conv(1, 64, 4) + conv(64, 128, 4, False) + conv(128, 256, 4, False) + conv(256, 512, 4, False)
                + conv(512, 1, 4))
    assert expected == 2_762_689 - 896
    assert n_params(PatchDiscriminator(ndf=64, n_layers=3)) == expected


@pytest.mark.parametrize("network", [lambda: ResnetGenerator(ngf=4, n_blocks=1), lambda: PatchDiscriminator(ndf=4)])
def test_a_state_dict_with_the_cancelled_biases_loads_and_computes_the_same(network):
    """Checkpoints of the earlier layout have a bias on every convolution; those before an instance norm
    cancel out, so dropping them on load changes no output (float64, random non-zero biases)."""
    torch.manual_seed(0)
    earlier = network().double()
    cancelled = 0
    for m in earlier.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is None:
            m.bias = nn.Parameter(torch.randn(m.out_channels, dtype=torch.float64))
            cancelled += 1
    state = earlier.state_dict()
    now = network().double()
    assert cancelled >= 3 and len(state) == len(now.state_dict()) + cancelled
    with pytest.raises(RuntimeError, match="Unexpected key"):
        now.load_state_dict(state)
    now.load_state_dict(drop_cancelled_biases(state, now))
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(now(x), earlier(x), rtol=0, atol=1e-12)


def test_subpixel_upsampling_equals_the_transposed_convolution_in_value_and_gradient():
    """kernel 3, stride 2, padding 1, output_padding 1 (the generator's) as a 2x2 conv + pixel_shuffle:
    same outputs and same gradients for the input, the weight and the bias, in float64."""
    torch.manual_seed(0)
    for bias in (False, True):
        reference = nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1, bias=bias).double()
        subpixel = SubpixelConvTranspose2d(6, 5, bias=bias).double()
        subpixel.load_state_dict(reference.state_dict())  # same parameters, same names
        x = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(2, 5, 14, 18, dtype=torch.float64)
        outputs, grads = [], []
        for layer in (reference, subpixel):
            y = layer(x)
            outputs.append(y)
            grads.append(torch.autograd.grad(y, [x, *layer.parameters()], upstream))
        assert outputs[1].shape == (2, 5, 14, 18)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-12)
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_subpixel_generator_computes_the_same_as_the_transposed_one():
    torch.manual_seed(0)
    transposed = ResnetGenerator(ngf=4, n_blocks=1).double()
    subpixel = ResnetGenerator(ngf=4, n_blocks=1, upsample="subpixel").double()
    subpixel.load_state_dict(transposed.state_dict())
    assert sum(isinstance(m, SubpixelConvTranspose2d) for m in subpixel.modules()) == 2
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(subpixel(x), transposed(x), rtol=0, atol=1e-12)


def test_resize_upsampling_draws_no_checkerboard_where_the_transposed_convolution_does():
    """On a constant feature map a stride-2 transposed convolution sums one kernel tap into even output
    pixels and two into odd ones, so its output alternates with their parity (Odena et al. 2016); a resize
    then a convolution weights every pixel alike and gives one value away from the border."""
    torch.manual_seed(0)
    x = torch.ones(1, 6, 8, 8)
    for form, alternates in (("transposed", True), ("subpixel", True), ("resize", False)):
        y = nn.Sequential(*upsampling(6, 5, form))(x)
        assert y.shape == (1, 5, 16, 16), form
        inner = y[:, :, 2:-2, 2:-2]
        spread = (inner - inner.mean((2, 3), keepdim=True)).abs().amax().item()
        assert (spread > 1e-3) == alternates, (form, spread)


def test_resize_generator_translates_and_refuses_transposed_weights():
    resize = ResnetGenerator(ngf=4, n_blocks=1, upsample="resize")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = resize(x)
    assert y.shape == (2, 1, 32, 32) and y.abs().max() <= 1
    with pytest.raises(RuntimeError, match="size mismatch"):  # another network: its checkpoints are its own
        resize.load_state_dict(ResnetGenerator(ngf=4, n_blocks=1).state_dict())


def test_code_defaults_are_the_paper_configuration():
    cfg = GanConfig()
    assert (cfg.model.ngf, cfg.model.ndf, cfg.model.n_blocks, cfg.model.n_layers_d) == (64, 64, 9, 3)
    assert cfg.model.upsample == "transposed"
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
    biases = [m.bias for m in gens.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    assert len(biases) == 2 and all((b == 0).all() for b in biases)  # each generator's last conv


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


def test_image_pool_fills_to_its_size_then_swaps_half_of_the_images():
    """Shrivastava et al.'s history as CycleGAN uses it: the first 50 images pass through and are stored;
    afterwards each image, with probability 1/2, is stored in place of a random stored one, which is
    returned; else it passes through and the history stays as it was."""
    torch.manual_seed(0)
    pool = ImagePool(50)
    first = torch.arange(48.0).view(16, 3, 1, 1, 1)
    for batch in first:
        assert torch.equal(pool.query(batch), batch)  # filling: images pass through
    assert int(pool.count) == 48
    filling_end = torch.tensor([48.0, 49.0, 1000.0]).view(3, 1, 1, 1)
    out = pool.query(filling_end)
    assert int(pool.count) == 50 and torch.equal(out[:2], filling_end[:2])  # the last two free slots
    stored = set(range(50)) if out[2] == 1000 else set(range(50)) - {out[2].item()} | {1000}  # full: may swap
    assert set(pool.images.flatten().tolist()) == stored
    swaps = 0
    for i in range(2000):
        new = torch.full((1, 1, 1, 1), 2000.0 + i)
        before = pool.images.clone()
        got = pool.query(new)
        if torch.equal(got, new):  # passed through: the history is unchanged
            assert torch.equal(pool.images, before)
        else:  # a stored image came out and the new one took its slot
            slot = (before.flatten() == got.item()).nonzero().item()
            expected = before.clone()
            expected[slot] = new[0]
            assert torch.equal(pool.images, expected)
            swaps += 1
    assert 0.45 < swaps / 2000 < 0.55 and int(pool.count) == 50


def test_image_pool_state_round_trips_and_replays_the_same_draws():
    torch.manual_seed(0)
    pool = ImagePool(4)
    pool.query(torch.rand(6, 1, 2, 2))
    clone = ImagePool(4)
    clone.load_state_dict(pool.state_dict())
    assert int(clone.count) == 4 and torch.equal(clone.images, pool.images)
    state = torch.get_rng_state()
    a = pool.query(torch.full((3, 1, 2, 2), -1.0))
    torch.set_rng_state(state)
    assert torch.equal(clone.query(torch.full((3, 1, 2, 2), -1.0)), a)
    assert torch.equal(clone.images, pool.images)
    assert torch.equal(ImagePool(0).query(a), a)  # size 0: no history


def test_lr_is_zhu_et_als_constant_then_linear_decay_to_zero():
    total, start = 100, 0.3
    steps = torch.arange(total + 1)
    got = decayed_lr(steps, 2e-4, total, start)
    constant = int(total * start)
    formula = [2e-4 * (1.0 - max(0, s - constant) / (total - constant)) for s in range(total + 1)]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(formula, dtype=torch.float64), rtol=1e-6, atol=0)
    assert got[0] == got[constant] == torch.tensor(2e-4) and got[-1] == 0


def test_the_model_steps_its_device_lr_and_both_optimisers_read_it():
    cfg = load_config(GanConfig, None, ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.n_layers_d=2",
                                        "train.pool_size=1", "train.decay_start=0.5"])
    torch.manual_seed(0)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=4)
    assert model.opt_g.param_groups[0]["lr"] is model.lr is model.opt_d.param_groups[0]["lr"]
    assert model.opt_g.defaults["fused"] and model.opt_d.defaults["fused"]
    seen = []
    for _ in range(4):
        seen.append(float(model.lr))
        model.set_input(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
        model.optimize_parameters()
    assert seen == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4]) and int(model.step) == 4 and float(model.lr) == 0
    restored = CycleGAN(cfg, torch.device("cpu"), total_steps=4)
    restored.load_state_dict(model.state_dict())
    assert int(restored.step) == 4 and float(restored.lr) == 0.0
    assert restored.opt_g.param_groups[0]["lr"] is restored.lr is restored.opt_d.param_groups[0]["lr"]


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of 4"):
        load_config(GanConfig, None, ["data.size=30"])
    with pytest.raises(UserError, match="domain"):
        load_config(GanConfig, None, ["train.domain_b=tuberculosis"])
    with pytest.raises(UserError, match="model.upsample"):
        load_config(GanConfig, None, ["model.upsample=bilinear"])


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_step_losses_and_gradients_match_a_hand_computation(monkeypatch):
    """One CycleGAN step against the paper's objective computed by hand on copies of the networks:
    LSGAN generator terms, λ_cycle · L1 cycle terms, λ_identity · λ_cycle · L1 identity terms, and
    0.5 · (real + fake) per discriminator; the generator loss gives the discriminators no gradient."""
    cfg = load_config(GanConfig, None, ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.n_layers_d=2",
                                        "train.pool_size=0", "train.bf16=false", "train.lambda_cycle=7",
                                        "train.lambda_identity=0.3"])
    torch.manual_seed(0)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=10)
    gens, discs = copy.deepcopy(model.generators), copy.deepcopy(model.discriminators)
    a, b = torch.rand(2, 1, 1, 32, 32) * 2 - 1

    fake_b, fake_a = gens.ab(a), gens.ba(b)
    mse1 = lambda s: ((s - 1) ** 2).mean()  # noqa: E731
    l1 = lambda x, y: (x - y).abs().mean()  # noqa: E731
    g_terms = [mse1(discs.b(fake_b)), mse1(discs.a(fake_a)), 7 * l1(gens.ba(fake_b), a), 7 * l1(gens.ab(fake_a), b),
               7 * 0.3 * l1(gens.ba(a), a), 7 * 0.3 * l1(gens.ab(b), b)]
    d_terms = [0.5 * (mse1(discs.a(a)) + (discs.a(fake_a.detach()) ** 2).mean()),
               0.5 * (mse1(discs.b(b)) + (discs.b(fake_b.detach()) ** 2).mean())]
    g_grads = torch.autograd.grad(sum(g_terms), list(gens.parameters()))
    d_grads = torch.autograd.grad(sum(d_terms), list(discs.parameters()))

    seen = {}

    def spy(name, optimizer, params):
        step = optimizer.step

        def recorded(*args, **kwargs):
            seen[name] = [None if p.grad is None else p.grad.clone() for p in params()]
            seen[name + "_discriminators"] = [p.grad for p in model.discriminators.parameters()]
            return step(*args, **kwargs)
        monkeypatch.setattr(optimizer, "step", recorded)

    spy("g", model.opt_g, model.generators.parameters)
    spy("d", model.opt_d, model.discriminators.parameters)
    model.set_input(a, b)
    losses = model.optimize_parameters()

    expected = torch.stack([t.detach() for t in g_terms + [torch.zeros(())] + d_terms])  # no outside-the-lungs term
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert all(g is None for g in seen["g_discriminators"])  # frozen during the generator step
    for got, want in zip(seen["g"] + seen["d"], g_grads + d_grads):  # float32, summed in another order
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-5)
