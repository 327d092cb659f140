"""gan-eval's SSIM: kornia's (on a GPU) and scikit-image's (on a CPU) are the same definition, number for number."""
import numpy as np
import pytest
import torch

import cyclegan.metrics as metrics
from augment.phantoms import write_phantoms
from augment.imageio import read_xray
from cyclegan.metrics import ssim_pairs, ssim_pairs_kornia


def pairs(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    return x, (0.7 * x + 0.3 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("size", [16, 33, 64])
def test_kornia_ssim_gives_scikit_images_numbers(size):
    x, y = pairs(5, size)
    np.testing.assert_allclose(ssim_pairs_kornia(x, y, batch_size=2), ssim_pairs(x, y), rtol=0, atol=1e-6)


def test_kornia_ssim_gives_scikit_images_numbers_on_x_ray_phantoms(tmp_path):
    data = write_phantoms(tmp_path / "data", 3, size=64, seed=1)
    films = sorted(data.glob("*/*.png"))
    x = torch.stack([torch.from_numpy(read_xray(p).astype(np.float32) / 255) for p in films])[:, None]
    y = torch.roll(x, 1, 0) * 0.5 + x * 0.5  # each film half mixed with another's
    np.testing.assert_allclose(ssim_pairs_kornia(x, y), ssim_pairs(x, y), rtol=0, atol=1e-6)
    assert ssim_pairs_kornia(x, x) == pytest.approx(np.ones(len(x)), abs=1e-6)
    assert ssim_pairs_kornia(x[:0], y[:0]).shape == (0,)


def test_ssim_pairs_computes_on_a_gpu_with_kornia(monkeypatch):
    calls = []
    monkeypatch.setattr(metrics, "ssim_pairs_kornia", lambda s, o, device, batch_size: calls.append(device) or "k")
    x, y = pairs(2, 16)
    assert ssim_pairs(x, y, "cuda") == "k" and calls == [torch.device("cuda")]
    assert isinstance(ssim_pairs(x, y, "cpu"), np.ndarray) and len(calls) == 1  # scikit-image on a CPU


@pytest.mark.gpu
def test_kornia_ssim_on_cuda_gives_the_cpu_numbers():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x, y = pairs(70, 64)
    np.testing.assert_allclose(ssim_pairs(x.cuda(), y.cuda()), ssim_pairs(x, y), rtol=0, atol=1e-5)
