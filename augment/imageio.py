"""Read any chest X-ray file into an 8-bit grayscale array.

PNG, JPEG, TIFF and BMP through Pillow (8/16-bit, gray, RGB, RGBA, palette, CMYK; EXIF orientation
applied); DICOM through pydicom when it is installed (MONOCHROME1 inverted, rescale slope and
intercept, the file's window). Wide-range images are mapped to 8 bits by a percentile window.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
Image.MAX_IMAGE_PIXELS = 400_000_000  # 20,000² radiographs are real; decoding is bounded below


class UnreadableImage(Exception):
    """The file is not an image this reader can decode; the message says why."""


def read_xray(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode ``path`` into a ``uint8 (H, W)`` array.

    Args:
        path: image file.
        max_side: when given, the image may come back reduced, its shorter side no smaller than
            this (fast and memory-light for huge files): JPEGs are decoded at a reduced scale,
            other formats are box-reduced right after decoding.
    Raises:
        UnreadableImage: with a short reason.
    """
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _read_dicom(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's EXIF and decompression chatter
            with Image.open(path) as im:
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


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise UnreadableImage("DICOM needs pydicom: pip install 'cxrgan[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
        x = ds.pixel_array.astype(np.float32)
    except Exception as e:  # pydicom raises many types for damaged files
        raise UnreadableImage(f"damaged or unsupported DICOM ({str(e).splitlines()[0][:120]})") from None
    if x.ndim == 3:  # colour or multi-frame: first frame, gray
        x = x[0] if x.shape[-1] not in (3, 4) else x[..., :3].mean(-1)
    x = x * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        out = (np.clip((x - (c - w / 2)) / max(w, 1), 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        out = window_to_u8(x)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        out = 255 - out
    return out
