"""ImageNet weights through the real download path (torch.hub, timm), served from this machine: a state dict
the test writes, behind a file:// URL or an HTTP server on 127.0.0.1, in place of the URL the weights API
gives. No test here reaches the internet: connections anywhere but the loopback fail."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from augment.phantoms import write_phantoms
from classifier.model import create_model
from classifier.weights import fetch_weights, imagenet_file
from cli import cli
from foundation.errors import UserError


@pytest.fixture(autouse=True)
def no_internet(monkeypatch):
    """Any connection to an address other than the loopback fails."""
    connect = socket.socket.connect

    def loopback_only(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"a test tried to reach {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private, empty $TORCH_HOME, with downloads allowed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("CXRGAN_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # 127.0.0.1 directly
    return tmp_path / "torch"


def serve_file(folder: Path, stem: str, state: dict) -> Path:
    """``state`` saved as ``<stem>-<first 10 hex digits of its sha256>.pth`` in ``folder`` (torch.hub's naming,
    whose hash is checked on download)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(folder / f"{stem}-{digest[:10]}.pth")


@contextlib.contextmanager
def http_server(folder: Path, seconds: float = 60):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port) in a thread; it stops when the block ends, or
    by itself after ``seconds``. Yields its base URL and the list of paths requested."""
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    timer = threading.Timer(seconds, server.shutdown)
    thread.start()
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(10)


def point_weights_at(monkeypatch, name: str, url: str) -> None:
    """torchvision's weights API gives ``url`` for ``name``'s default ImageNet weights."""
    monkeypatch.setattr(torchvision.models.get_model_weights(name).DEFAULT.value, "url", url)


def test_imagenet_weights_are_downloaded_into_torch_hubs_cache_then_read_offline(torch_home, tmp_path, monkeypatch):
    reference = torchvision.models.squeezenet1_1(weights=None)
    served = serve_file(tmp_path / "server", "squeezenet1_1", reference.state_dict())
    point_weights_at(monkeypatch, "squeezenet1_1", served.as_uri())
    model = create_model("squeezenet1_1", 3, pretrained="imagenet")
    cached = torch_home / "hub" / "checkpoints" / served.name
    assert imagenet_file("squeezenet1_1") == cached and cached.read_bytes() == served.read_bytes()
    assert torch.allclose(model.backbone[0].weight, reference.features[0].weight.sum(1, keepdim=True))
    assert torch.equal(model.backbone[12].expand3x3.weight, reference.features[12].expand3x3.weight)
    served.unlink()  # the cache is read, offline too: the source is gone
    monkeypatch.setenv("CXRGAN_OFFLINE", "1")
    model = create_model("squeezenet1_1", 3, pretrained="imagenet")
    assert torch.equal(model.backbone[12].expand3x3.weight, reference.features[12].expand3x3.weight)


@pytest.mark.slow
def test_download_over_http_checks_the_hash_and_keeps_nothing_damaged(torch_home, tmp_path, monkeypatch):
    reference = torchvision.models.squeezenet1_1(weights=None)
    served = serve_file(tmp_path / "server", "squeezenet1_1", reference.state_dict())
    wrong = served.with_name("squeezenet1_1-0123456789.pth")  # a name whose hash the file does not have
    wrong.write_bytes(served.read_bytes())
    with http_server(served.parent) as (base, requested):
        point_weights_at(monkeypatch, "squeezenet1_1", f"{base}/{wrong.name}")
        with pytest.raises(UserError, match="invalid hash value.*the download was damaged"):
            create_model("squeezenet1_1", 3, pretrained="imagenet")
        assert not any((torch_home / "hub" / "checkpoints").iterdir())
        point_weights_at(monkeypatch, "squeezenet1_1", f"{base}/missing-0123456789.pth")
        with pytest.raises(UserError, match=r"missing-0123456789.pth: could not download \(File not found\)"):
            create_model("squeezenet1_1", 3, pretrained="imagenet")
        point_weights_at(monkeypatch, "squeezenet1_1", f"{base}/{served.name}")
        model = create_model("squeezenet1_1", 3, pretrained="imagenet")
        create_model("squeezenet1_1", 3, pretrained="imagenet")  # from the cache: no second request
    assert requested == [f"/{wrong.name}", "/missing-0123456789.pth", f"/{served.name}"]
    assert torch.equal(model.backbone[12].expand3x3.weight, reference.features[12].expand3x3.weight)


@pytest.mark.parametrize("how", ["flag", "CXRGAN_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_downloads_and_says_what_to_do(torch_home, tmp_path, monkeypatch, how):
    served = serve_file(tmp_path / "server", "squeezenet1_1", torchvision.models.squeezenet1_1().state_dict())
    point_weights_at(monkeypatch, "squeezenet1_1", served.as_uri())  # reachable, and still not fetched
    monkeypatch.setenv("CXRGAN_OFFLINE", "0")  # restored after the test, whatever --offline sets
    if how != "flag":
        monkeypatch.setenv(how, "1")
    data = write_phantoms(tmp_path / "data", 6, size=32, seed=0)
    r = CliRunner().invoke(cli, [*["--offline"] * (how == "flag"), "classify-train", "--data", str(data),
                                 "--out", str(tmp_path / "runs"), "--backbone", "squeezenet1_1",
                                 "--pretrained", "imagenet", "--set", "data.size=32",
                                 "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert r.exit_code == 2
    variable = "CXRGAN_OFFLINE" if how == "flag" else how
    assert f"{served.name}: ImageNet weights for squeezenet1_1 are not there and {variable}=1 forbids" in r.output
    assert "fetch-weights squeezenet1_1" in r.output and served.as_uri() in r.output
    assert not (torch_home / "hub" / "checkpoints").exists()
    r = CliRunner().invoke(cli, [*["--offline"] * (how == "flag"), "fetch-weights", "squeezenet1_1"])
    assert r.exit_code == 2 and "fetch-weights downloads" in r.output


def test_fetch_weights_stages_files_for_a_machine_without_internet(torch_home, tmp_path, monkeypatch):
    reference = torchvision.models.squeezenet1_1(weights=None)
    served = serve_file(tmp_path / "server", "squeezenet1_1", reference.state_dict())
    point_weights_at(monkeypatch, "squeezenet1_1", served.as_uri())
    r = CliRunner().invoke(cli, ["fetch-weights", "squeezenet1_1"])
    assert r.exit_code == 0, r.output
    cached = torch_home / "hub" / "checkpoints" / served.name
    assert f"squeezenet1_1: {cached}" in r.output and cached.is_file()
    # the air-gapped machine: the copied folder and no network
    other = tmp_path / "other"
    (other / "hub" / "checkpoints").mkdir(parents=True)
    cached.rename(other / "hub" / "checkpoints" / cached.name)
    monkeypatch.setenv("TORCH_HOME", str(other))
    monkeypatch.setenv("CXRGAN_OFFLINE", "1")
    model = create_model("squeezenet1_1", 3, pretrained="imagenet")
    assert torch.equal(model.backbone[12].expand3x3.weight, reference.features[12].expand3x3.weight)
    with pytest.raises(UserError, match="'shallow' has no ImageNet weights"):
        monkeypatch.setenv("CXRGAN_OFFLINE", "0")
        fetch_weights(["shallow"])
    with pytest.raises(UserError, match="unknown backbone 'resnet51'"):
        fetch_weights(["resnet51"])


def test_timm_weights_come_through_timms_own_download_and_are_staged_for_offline(torch_home, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from timm.models import _registry
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # RGB, with its fc
    served = serve_file(tmp_path / "server", "resnet10t", reference.state_dict())
    # timm's registry gives our URL and no Hugging Face hub id for resnet10t's default weights
    key = timm.models.get_pretrained_cfg("resnet10t").architecture
    for name in (key, f"{key}.{timm.models.get_pretrained_cfg('resnet10t').tag}"):
        if name in _registry._model_pretrained_cfgs:
            cfg = _registry._model_pretrained_cfgs[name]
            monkeypatch.setattr(cfg, "url", served.as_uri())
            monkeypatch.setattr(cfg, "hf_hub_id", None)
    model = create_model("timm:resnet10t", 3, pretrained="imagenet")
    assert (torch_home / "hub" / "checkpoints" / served.name).is_file()  # timm's cache: torch.hub's, for a URL
    assert torch.allclose(model.backbone.model.conv1[0].weight, reference.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(model.backbone.model.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    [(name, staged)] = fetch_weights(["timm:resnet10t"])
    assert name == "timm:resnet10t" and staged == torch_home / "hub" / "checkpoints" / "timm" / "resnet10t.pth"
    served.unlink()
    (torch_home / "hub" / "checkpoints" / served.name).unlink()  # only the staged file is left
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model("timm:resnet10t", 3, pretrained="imagenet")
    assert torch.equal(model.backbone.model.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)


def test_a_timm_download_that_fails_is_one_line(torch_home, tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from timm.models import _registry
    for name, cfg in list(_registry._model_pretrained_cfgs.items()):
        if name.split(".")[0] == "resnet10t":
            monkeypatch.setattr(cfg, "url", (tmp_path / "nothing-0123456789.pth").as_uri())
            monkeypatch.setattr(cfg, "hf_hub_id", None)
    with pytest.raises(UserError) as e:
        create_model("timm:resnet10t", 3, pretrained="imagenet")
    assert "\n" not in str(e.value) and "timm could not fetch the ImageNet weights of timm:resnet10t" in str(e.value)
