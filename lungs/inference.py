"""Lung masks from a trained segmenter: in memory (:class:`LungSegmenter`, for the audit and lung cropping)
and as files (:func:`segment_files`: binary mask PNGs at each image's own size and contour overlays)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from augment.data import DataConfig, csv_rows, file_sha256, to_square, warn, write_csv
from augment.imageio import IMAGE_SUFFIXES, UnreadableImage, read_xray
from foundation.checkpoints import load_checkpoint
from foundation.devices import pick_device
from foundation.errors import UserError, cli_command
from foundation.outputs import confined_outputs, output_path
from foundation.runs import latest_run, resolve_run_file

from .data import discover_pairs, from_square
from .unet import UNet

CHECKPOINT_NAME = "checkpoint.pt"
CONTOUR_RGB = (255, 60, 40)


def load_segmenter(path: str | Path, device: torch.device) -> tuple[UNet, dict]:
    """The U-Net of a ``lungseg-train`` checkpoint file, in eval mode on ``device``, and the checkpoint."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "input" not in ckpt:
        raise UserError(f"{path}: not a lung segmenter checkpoint; give a run folder of `{cli_command()} lungseg-train`")
    model = UNet(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


@torch.no_grad()
def predict_probs(model: UNet, images_u8: torch.Tensor, size: int, device: torch.device,
                  batch_size: int = 32) -> torch.Tensor:
    """Lung probabilities ``float (N, 1, S, S)`` on the CPU of ``uint8 (N, 1, S, S)`` images; the model sees
    them resized to its training ``size`` and its output is resized back."""
    out = []
    for batch in images_u8.split(batch_size):
        x = batch.to(device).float() / 255
        side = x.shape[-2:]
        if side != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        prob = torch.sigmoid(model(x).float())
        if side != (size, size):
            prob = F.interpolate(prob, size=side, mode="bilinear", align_corners=False)
        out.append(prob.cpu())
    return torch.cat(out) if out else torch.zeros(images_u8.shape, dtype=torch.float32)


class LungSegmenter:
    """A :class:`augment.lungmask.LungMasker` backed by the segmenter of ``checkpoint`` (a ``lungseg-train``
    run folder or checkpoint file): ``segmenter(images)`` gives lung masks ``bool (N, 1, S, S)`` of
    ``uint8 (N, 1, S, S)`` images, lung where the probability is at least 0.5. ``identity`` is the
    checkpoint's sha256, so caches built with its masks change when the segmenter does."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "auto", out: str | Path = "runs"):
        self.path = checkpoint_file(checkpoint, out)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # under torchrun, each rank on its own GPU
        self.device = pick_device(device, local_rank) if isinstance(device, str) else device
        self.model, ckpt = load_segmenter(self.path, self.device)
        self.size = ckpt["input"]["size"]
        self.identity = file_sha256(self.path)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return predict_probs(self.model, images, self.size, self.device) >= 0.5


def masker_for(data: DataConfig, device: str | torch.device = "auto") -> LungSegmenter | None:
    """The segmenter of ``data.lungseg_run`` when ``data`` asks for lung-cropped or lung-masked images (the
    ``lung_masker`` that :func:`augment.data.load_dataset` and the classifier's commands take), else None."""
    if not data.uses_lungs:
        return None
    if not Path(data.lungseg_run).exists():
        raise UserError(f"data.lungseg_run {data.lungseg_run}: no such lungseg run folder or checkpoint (needed by "
                        f"{data.lung_settings}); train one with `{cli_command()} lungseg-train` or correct the path")
    return LungSegmenter(data.lungseg_run, device)


def checkpoint_file(checkpoint: str | Path | None, out: str | Path = "runs") -> Path:
    """The checkpoint of a run folder or file; None: the latest ``lungseg-train`` run under ``out``."""
    if checkpoint is None:
        checkpoint = latest_run(out, "lungseg", marker=CHECKPOINT_NAME)
        if checkpoint is None:
            raise UserError(f"{Path(out) / 'lungseg'}: no lung segmenter run yet; run `{cli_command()} lungseg-train` "
                            "first or pass --checkpoint")
    return resolve_run_file(checkpoint, out, "lungseg", (CHECKPOINT_NAME,))


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``uint8 (H, W, 3)``: the gray ``image (H, W)`` with the outline of ``mask`` ``bool (H, W)`` drawn over
    it, about 1/200 of the longer side thick."""
    from skimage.morphology import dilation, disk  # here: scikit-image's import takes most of a second
    from skimage.segmentation import find_boundaries
    edge = find_boundaries(mask, mode="inner")
    radius = max(mask.shape) // 400
    if radius:
        edge = dilation(edge, disk(radius))
    rgb = np.repeat(image[..., None], 3, axis=2)
    rgb[edge] = CONTOUR_RGB
    return rgb


def input_files(images: list[Path], data: Path | None) -> list[tuple[Path, str]]:
    """``(file, output name)`` of the images to segment: the given files (named by stem), or ``data``'s:
    a lung or classifier manifest's images, ``images/`` of a pair folder, or every image file under it
    (named by their path less suffix, relative to the data root once both are normalised: a ``..`` that
    leads out of it names a folder ``_``; :func:`foundation.outputs.output_path` confines the outputs)."""
    if images:
        names = {}
        for path in images:
            if path.stem in names:
                raise UserError(f"{path}: {names[path.stem]} has the same name; outputs would collide, "
                                "segment them in two runs with different --dest")
            names[path.stem] = path
        return [(path, path.stem) for path in images]
    if data is None:
        raise UserError("give IMAGES or --data DIR to segment")
    manifest = data if data.is_file() else data / "manifest.csv"
    if manifest.is_file() or (data / "images").is_dir():
        if manifest.is_file():
            root, names = _manifest_images(manifest)
        else:
            root, pairs = discover_pairs(data)
            names = [p.image for p in pairs]
        files = [root / name for name in names]
    elif data.is_dir():
        root = data
        files = sorted(p for p in data.rglob("*") if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise UserError(f"{data}: no such folder or manifest")
    if not files:
        raise UserError(f"{data}: no image file to segment ({', '.join(sorted(IMAGE_SUFFIXES))})")
    top = os.path.abspath(root)
    return [(f, Path(os.path.relpath(os.path.abspath(f), top)).with_suffix("").as_posix()) for f in files]


def _manifest_images(manifest: Path) -> tuple[Path, list[str]]:
    """The image column (``image`` or ``path``) of a manifest."""
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        rows = csv_rows(f)
    column = "image" if rows and "image" in rows[0] else "path"
    if not rows or column not in rows[0]:
        raise UserError(f"{manifest}: needs a column image or path listing the images to segment")
    return manifest.parent, [r[column].strip() for r in rows if r[column].strip()]


def segment_files(files: list[tuple[Path, str]], checkpoint: str | Path | None, dest: str | Path | None,
                  out: str | Path = "runs", overwrite: bool = False, device: str = "auto") -> Path:
    """Write ``<dest>/mask/<name>.png`` (0/255 at the image's own size), ``<dest>/overlay/<name>.png`` (the
    lung outline over the X-ray) and ``<dest>/masks.csv`` for each ``(file, name)``; ``dest`` defaults to
    ``<run>/masks``. Every output lies inside ``dest`` (:func:`foundation.outputs.output_path`), and two inputs
    writing one output, or an output that is an input, are refused before anything is written. Refuses to
    replace files unless ``overwrite``; unreadable images are skipped with a warning and counted. Returns
    ``dest``."""
    path = checkpoint_file(checkpoint, out)
    dest = Path(dest) if dest else path.parent / "masks"
    targets = [(f, output_path(dest / "mask", name, ".png"), output_path(dest / "overlay", name, ".png"))
               for f, name in files]
    confined_outputs([f for f, _, _ in targets for _ in "mo"], [p for _, m, o in targets for p in (m, o)])
    existing = [p for _, m, o in targets for p in (m, o) if p.exists()] + [dest / "masks.csv"] * (dest / "masks.csv").exists()
    if existing and not overwrite:
        raise UserError(f"{dest}: already holds {len(existing)} output file(s) (e.g. {existing[0]}); "
                        "pass --overwrite or choose another --dest")
    dev = pick_device(device)
    model, ckpt = load_segmenter(path, dev)
    size, resize = ckpt["input"]["size"], ckpt["input"]["resize"]
    rows, skipped = [], 0
    for file, mask_path, overlay_path in targets:
        try:
            image = read_xray(file)
        except UnreadableImage as e:
            warn(f"skipped {file}: {e}")
            skipped += 1
            continue
        square = torch.from_numpy(to_square(image, size, resize))[None, None]
        prob = predict_probs(model, square, size, dev)[0, 0].numpy()
        lungs = from_square(prob, image.shape, resize) >= 0.5
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lungs.astype(np.uint8) * 255).save(mask_path)
        Image.fromarray(overlay(image, lungs)).save(overlay_path)
        rows.append({"image": str(file.resolve()), "mask": str(mask_path), "overlay": str(overlay_path),
                     "lung_fraction": f"{lungs.mean():.4f}"})
    if skipped:
        warn(f"skipped {skipped} of {len(targets)} image(s) that could not be read")
    write_csv(dest / "masks.csv", rows, ("image", "mask", "overlay", "lung_fraction"))
    return dest
