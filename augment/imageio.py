"""Read any chest X-ray file into an 8-bit grayscale array.

PNG, JPEG, TIFF and BMP through Pillow (8/16-bit, gray, RGB, RGBA, palette, CMYK; EXIF orientation
applied); DICOM through pydicom 3 when it is installed, as a viewer shows it (modality LUT or rescale,
VOI LUT sequence or window, LINEAR or SIGMOID, MONOCHROME1 inverted; JPEG, JPEG-LS and JPEG 2000
compressed files through pylibjpeg's decoders). Wide-range images without a VOI are mapped to 8 bits
by a percentile window.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
Image.MAX_IMAGE_PIXELS = 400_000_000  # Pillow's own refusal; data.max_pixels may let through up to this
MAX_PIXELS = 100_000_000  # default limit of pixels per image (data.max_pixels), checked from the header:
                          # 10,000² at most, several times a digital radiograph's 3,000 × 3,500


class UnreadableImage(Exception):
    """The file is not an image this reader can decode; the message says why."""


def read_xray(path: str | Path, max_side: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into a ``uint8 (H, W)`` array.

    Args:
        path: image file.
        max_side: when given, the image may come back reduced, its shorter side no smaller than
            this (fast and memory-light for huge files): JPEGs are decoded at a reduced scale,
            other formats are box-reduced right after decoding.
        max_pixels: an image of more pixels (width × height, read from its header) is not decoded,
            so memory per image stays bounded.
    Raises:
        UnreadableImage: with a short reason.
    """
    path = Path(path)
    _require_regular_file(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _read_dicom(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's EXIF and decompression chatter
            with Image.open(path) as im:  # reads the header only
                _require_pixels(im.width, im.height, max_pixels)
                if max_side and im.format == "JPEG":
                    im.draft("L", (max_side, max_side))
                im = ImageOps.exif_transpose(im)
                return _to_gray_u8(im, max_side)
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image file (unknown or empty content)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"damaged or unsupported image ({str(e).splitlines()[0][:120]})") from None


def _require_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UnreadableImage(f"too many pixels ({width}×{height} = {width * height / 1e6:.0f} M, more than "
                              f"data.max_pixels = {max_pixels / 1e6:g} M); raise data.max_pixels to read it")


def _require_regular_file(path: Path) -> None:
    """Only regular files (or links to them) are read: opening a FIFO would wait for a writer forever, a
    device could be read without end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except OSError as e:
        raise UnreadableImage(f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise UnreadableImage(f"not a regular file ({file_kind(mode)}); only image files are read")


def file_kind(mode: int) -> str:
    """What a non-regular file of ``st_mode`` ``mode`` is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


def _to_gray_u8(im: Image.Image, max_side: int | None = None) -> np.ndarray:
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    if im.mode in ("I", "F"):
        return window_to_u8(np.asarray(_reduce(im, max_side), dtype=np.float32))
    if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info) or im.mode == "LA":
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))  # X-ray background is dark
        im = Image.alpha_composite(background, im)
    if im.mode == "CMYK":
        im = im.convert("RGB")
    if im.mode != "L":
        im = im.convert("L")
    return np.array(_reduce(im, max_side), dtype=np.uint8)


def _reduce(im: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shorter side at least ``max_side``."""
    factor = min(im.size) // max_side if max_side else 1
    return im.reduce(factor) if factor >= 2 else im


def window_to_u8(x: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map a wide-range array to ``uint8`` through its ``[low, high]`` percentile window."""
    lo, hi = np.percentile(x, [low, high])
    if hi <= lo:
        hi = lo + 1
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def _read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """DICOM as a viewer shows it: first frame; modality LUT (sequence or rescale slope/intercept), then
    the first VOI LUT (sequence, or window LINEAR / LINEAR_EXACT / SIGMOID), stretched to 0-255 over the
    range it reaches; without a VOI, the percentile window. MONOCHROME1 inverted; colour to luminance."""
    try:
        import pydicom
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    except ImportError:
        raise UnreadableImage("DICOM needs pydicom 3: pip install 'cxrgan[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.get("TransferSyntaxUID")
    except Exception as e:  # pydicom raises many types for damaged files
        raise UnreadableImage(f"damaged or unsupported DICOM ({_first_line(e)})") from None
    _require_pixels(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0), max_pixels)
    try:
        x = ds.pixel_array
    except Exception as e:
        if syntax is not None and syntax.is_compressed:
            raise UnreadableImage(f"compressed DICOM ({syntax.name}) that no installed decoder reads "
                                  f"({_first_line(e)}); pip install 'cxrgan[dicom]' adds pylibjpeg's decoders") from None
        raise UnreadableImage(f"damaged or unsupported DICOM ({_first_line(e)})") from None
    if int(ds.get("NumberOfFrames") or 1) > 1:
        x = x[0]
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        x = apply_color_lut(x, ds)
    if x.ndim == 3:  # colour (pydicom gives YBR as RGB)
        gray = x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return gray.round().astype(np.uint8) if x.dtype == np.uint8 else window_to_u8(gray)
    x = apply_modality_lut(x, ds)
    has_voi = bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        if ds.get("VOILUTSequence"):
            x = np.rint(x).astype(np.int64)  # a LUT is indexed by stored (integer) values
        try:
            y = np.asarray(apply_voi_lut(x, ds), dtype=np.float64)
        except Exception as e:  # a window of width 0, an unknown VOI LUT function, ...
            raise UnreadableImage(f"DICOM with an invalid VOI LUT or window ({_first_line(e)})") from None
        lo, hi = float(y.min()), float(y.max())
        out = (np.clip((y - lo) / max(hi - lo, 1e-12), 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        out = window_to_u8(np.asarray(x, dtype=np.float32))
    return 255 - out if photometric == "MONOCHROME1" else out


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]
