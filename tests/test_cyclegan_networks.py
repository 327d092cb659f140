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


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_step_losses_and_gradients_match_a_hand_computation(monkeypatch):
    """One CycleGAN step against the paper's objective computed by hand on copies of the networks:
    LSGAN generator terms, λ_cycle · L1 cycle terms, λ_identity · λ_cycle · L1 identity terms, and
    0.5 · (real + fake) per discriminator; the generator loss gives the discriminators no gradient."""
    import copy
    from cyclegan.model import CycleGAN
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

    expected = torch.stack([t.detach() for t in g_terms + d_terms])
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert all(g is None for g in seen["g_discriminators"])  # frozen during the generator step
    for got, want in zip(seen["g"] + seen["d"], g_grads + d_grads):  # float32, summed in another order
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-5)
