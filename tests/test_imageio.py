"""Reading every supported format and mode into 8-bit gray."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from augment.imageio import UnreadableImage, read_xray, window_to_u8

from conftest import ROOT

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
SMOOTH = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (20, 1))  # survives JPEG


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp"])
def test_lossless_gray_8bit_roundtrips(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(GRAY).save(path)
    out = read_xray(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, GRAY)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_gray(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(SMOOTH).save(path, quality=95)
    out = read_xray(path)
    assert out.shape == (20, 30)
    assert np.abs(out.astype(int) - SMOOTH).max() <= 8


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_ramp_fills_8bit_range_monotonically(tmp_path, suffix):
    ramp = np.tile(np.linspace(1000, 40000, 200).astype(np.uint16), (10, 1))
    path = tmp_path / f"ramp{suffix}"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really written as 16-bit
    out = read_xray(path)
    assert out.dtype == np.uint8 and out.shape == (10, 200)
    row = out[0].astype(int)
    assert row.min() == 0 and row.max() == 255
    assert np.all(np.diff(row) >= 0)
    assert len(np.unique(row)) > 150  # a window, not a threshold


def test_float_tiff_is_windowed(tmp_path):
    x = np.tile(np.linspace(-3.0, 5.0, 100, dtype=np.float32), (4, 1))
    Image.fromarray(x, mode="F").save(tmp_path / "f.tif")
    out = read_xray(tmp_path / "f.tif")
    assert out[0, 0] == 0 and out[0, -1] == 255 and np.all(np.diff(out[0].astype(int)) >= 0)


def test_window_of_constant_image_does_not_divide_by_zero():
    out = window_to_u8(np.full((5, 5), 7.0))
    assert out.dtype == np.uint8 and len(np.unique(out)) == 1


def test_rgb_becomes_luminance(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)
    rgb[:, 3:] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = read_xray(tmp_path / "rgb.png")
    assert out.shape == (4, 6)
    assert abs(int(out[0, 0]) - 76) <= 1 and out[0, 5] == 255


def test_rgba_is_composited_onto_black(tmp_path):
    rgba = np.full((4, 3, 4), 255, np.uint8)
    rgba[:, 0, 3] = 0      # transparent white → black
    rgba[:, 1, 3] = 128    # half-transparent white → mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_xray(tmp_path / "rgba.png")
    assert out[0, 0] == 0 and abs(int(out[0, 1]) - 128) <= 1 and out[0, 2] == 255


def test_la_is_composited_onto_black(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = 200
    la[0, :, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_xray(tmp_path / "la.png")
    np.testing.assert_array_equal(out, [[200, 200], [0, 0]])


def _palette_image() -> Image.Image:
    im = Image.new("P", (4, 2))
    im.putpalette([255, 255, 255, 255, 255, 255, 100, 100, 100] + [0] * 759)
    im.putdata([0, 0, 1, 1, 2, 2, 2, 2])
    return im


def test_palette_without_transparency(tmp_path):
    _palette_image().save(tmp_path / "p.png")
    out = read_xray(tmp_path / "p.png")
    np.testing.assert_array_equal(out, [[255, 255, 255, 255], [100, 100, 100, 100]])


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_is_black(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    _palette_image().save(path, transparency=0)
    if suffix == ".gif":  # GIF is not a listed X-ray format; read it by name anyway
        path = path.rename(path.with_suffix(".png"))
    out = read_xray(path)
    np.testing.assert_array_equal(out, [[0, 0, 255, 255], [100, 100, 100, 100]])


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (8, 4), (0, 0, 0, 0))               # white paper
    im.paste((0, 0, 0, 255), (0, 0, 4, 4))                     # black ink on the left
    im.save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    out = read_xray(tmp_path / "cmyk.jpg")
    assert out.shape == (4, 8)
    assert out[:, :2].max() < 30 and out[:, -2:].min() > 225


def test_bilevel_image(tmp_path):
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "b.png"), np.eye(4, dtype=np.uint8) * 255)


@pytest.mark.parametrize("max_side", [None, 8])
def test_exif_orientation_is_applied(tmp_path, max_side):
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    Image.fromarray(stored).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_xray(tmp_path / "o.jpg", max_side=max_side)
    assert out.shape[0] > out.shape[1]  # portrait after rotation
    assert out[: out.shape[0] // 2 - 1].mean() > 230  # stored left is now on top
    assert out[out.shape[0] // 2 + 1:].mean() < 25


def test_max_side_keeps_shorter_side_at_least(tmp_path):
    big = np.tile(np.linspace(0, 255, 1000).astype(np.uint8), (600, 1))
    for suffix in (".jpg", ".png"):
        Image.fromarray(big).save(tmp_path / f"big{suffix}")
        out = read_xray(tmp_path / f"big{suffix}", max_side=100)
        assert min(out.shape) >= 100 and out.shape[1] > out.shape[0]
        assert out.shape[0] < 600  # reduced while decoding
        assert np.all(np.diff(out[out.shape[0] // 2].astype(int)) >= -2)


def test_dicom_without_pydicom_says_what_to_install(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    try:
        import pydicom  # noqa: F401
    except ImportError:
        with pytest.raises(UnreadableImage, match="needs pydicom"):
            read_xray(path)
    else:
        with pytest.raises(UnreadableImage, match="damaged or unsupported DICOM"):
            read_xray(path)


def test_dicom_with_pydicom():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    out = read_xray(path)
    assert out.dtype == np.uint8 and out.shape == (ds.Rows, ds.Columns) and out.max() > out.min()


def ct_small(tmp_path, name, **changes):
    """pydicom's CT_small.dcm (int16, rescale intercept -1024, no window) with ``changes`` set, saved as
    ``name``; returns the path and the stored pixels. The wheel ships no CR/DX film, so the VOI LUT,
    SIGMOID, modality LUT and MONOCHROME1 cases are made from it."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(tmp_path / name)
    return tmp_path / name, ds.pixel_array.astype(np.int64)


def lut_item(first: int, data: list[int]):
    from pydicom.dataset import Dataset
    item = Dataset()
    item.add_new(0x00283002, "SS" if first < 0 else "US", [len(data), first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def stretched(y: np.ndarray) -> np.ndarray:
    return (np.clip((y - y.min()) / (y.max() - y.min()), 0, 1) * 255 + 0.5).astype(np.uint8)


def test_dicom_monochrome1_is_inverted(tmp_path):
    plain, _ = ct_small(tmp_path, "plain.dcm")
    inverted, _ = ct_small(tmp_path, "m1.dcm", PhotometricInterpretation="MONOCHROME1")
    assert np.array_equal(read_xray(inverted), 255 - read_xray(plain))


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    _, stored = ct_small(tmp_path, "ref.dcm")
    hu = stored - 1024
    first = int(hu.min())
    lut = (np.sqrt(np.arange(hu.max() - first + 1) / (hu.max() - first)) * 4095).astype(int)  # a gamma curve
    path, _ = ct_small(tmp_path, "voi.dcm", VOILUTSequence=[lut_item(first, lut.tolist())])
    out = read_xray(path)
    assert np.array_equal(out, stretched(lut[hu - first].astype(float)))
    assert not np.array_equal(out, window_to_u8(hu.astype(np.float32)))  # differs from ignoring the LUT


def test_dicom_sigmoid_window(tmp_path):
    _, stored = ct_small(tmp_path, "ref.dcm")
    hu = (stored - 1024).astype(float)
    c, w = float(np.median(hu)), 200.0
    sigmoid, _ = ct_small(tmp_path, "s.dcm", WindowCenter=c, WindowWidth=w, VOILUTFunction="SIGMOID")
    linear, _ = ct_small(tmp_path, "l.dcm", WindowCenter=c, WindowWidth=w, VOILUTFunction="LINEAR_EXACT")
    out = read_xray(sigmoid)
    assert np.abs(out.astype(int) - stretched(1 / (1 + np.exp(-4 * (hu - c) / w)))).max() <= 1
    assert np.abs(read_xray(linear).astype(int) - stretched(np.clip((hu - c) / w + 0.5, 0, 1))).max() <= 1
    assert np.abs(out.astype(int) - read_xray(linear)).mean() > 2


def test_dicom_modality_lut_sequence_replaces_rescale(tmp_path):
    _, stored = ct_small(tmp_path, "ref.dcm")
    first = int(stored.min())
    lut = (4095 - np.arange(stored.max() - first + 1)).clip(0)  # a decreasing modality LUT
    path, _ = ct_small(tmp_path, "mlut.dcm", RescaleSlope=None, RescaleIntercept=None,
                       ModalityLUTSequence=[lut_item(first, lut.tolist())])
    out = read_xray(path)
    assert np.array_equal(out, window_to_u8(lut[stored - first].astype(np.float32)))
    assert np.corrcoef(out.ravel(), read_xray(tmp_path / "ref.dcm").ravel())[0, 1] < -0.9


@pytest.mark.parametrize("name,decoder", [
    ("MR_small_jpeg_ls_lossless.dcm", "libjpeg"),  # JPEG-LS lossless
    ("MR_small_jp2klossless.dcm", "openjpeg"),  # JPEG 2000 lossless
])
def test_compressed_dicom_decodes_to_the_uncompressed_pixels(name, decoder):
    pytest.importorskip("pydicom")
    pytest.importorskip(decoder, reason="the dicom extra's decoders are not installed")
    from pydicom.data import get_testdata_file
    assert np.array_equal(read_xray(get_testdata_file(name)), read_xray(get_testdata_file("MR_small.dcm")))


@pytest.mark.parametrize("name,shape", [
    ("JPGExtended.dcm", (1024, 256)),  # 12-bit JPEG extended, as CR exports often are; Pillow cannot
    ("SC_rgb_jpeg_gdcm.dcm", (100, 100)),  # JPEG lossless (process 14), RGB
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100)),  # JPEG baseline, YBR
])
def test_jpeg_compressed_dicom_is_readable(name, shape):
    pytest.importorskip("pydicom")
    pytest.importorskip("libjpeg", reason="the dicom extra's decoders are not installed")
    from pydicom.data import get_testdata_file
    out = read_xray(get_testdata_file(name))
    assert out.shape == shape and out.dtype == np.uint8 and out.std() > 10


def test_compressed_dicom_without_a_decoder_says_what_to_install(monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    def no_decoder(self):
        raise RuntimeError("Unable to decompress: all plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(UnreadableImage, match=r"JPEG-LS .*pip install 'cxrgan\[dicom\]'"):
        read_xray(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_file_is_unreadable(tmp_path, suffix, fmt):
    path = tmp_path / f"t{suffix}"
    Image.fromarray(GRAY).resize((200, 200)).save(path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableImage, match="damaged"):
        read_xray(path)


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n"])
def test_empty_or_text_file_named_png(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match="not an image"):
        read_xray(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableImage, match="not found"):
        read_xray(tmp_path / "nope.png")


def test_one_pixel_image(tmp_path):
    Image.new("L", (1, 1), 77).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_xray(tmp_path / "one.png"), [[77]])


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_unreadable_permissions(tmp_path):
    path = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(UnreadableImage, match="permission denied"):
            read_xray(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("suffix,limit_mb", [(".jpg", 60), (".png", 220)])
@pytest.mark.slow
def test_huge_image_decodes_in_bounded_memory(tmp_path, suffix, limit_mb):
    """A 12,000² radiograph (144 MB of pixels, above the default limit: let through) is read at cache size
    without several full copies."""
    path = tmp_path / f"huge{suffix}"
    im = Image.new("L", (12000, 12000), 20)
    im.paste(230, (0, 0, 6000, 12000))  # bright left half
    im.save(path, **({"quality": 50} if suffix == ".jpg" else {"compress_level": 1}))
    del im
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        import numpy as np
        from augment.imageio import read_xray
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = read_xray({str(path)!r}, max_side=256, max_pixels=200_000_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(min(out.shape), int(out[:, :out.shape[1] // 4].mean()), int(out[:, -out.shape[1] // 4:].mean()),
              (after - before) // 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    side, left, right, grown_mb = map(int, res.stdout.split())
    assert 256 <= side < 1000
    assert left > 200 and right < 50
    assert grown_mb < limit_mb, f"reading grew memory by {grown_mb} MB"
