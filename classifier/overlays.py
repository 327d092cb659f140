"""CAM overlays written as PNGs: the X-ray beside its heat map for the predicted or a named class, with a
colour bar and the class and its probability on the image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from augment.data import decode_to_square, lung_view, warn_lungs_not_found
from augment.imageio import MAX_PIXELS, UnreadableImage
from augment.lungmask import LungMasker
from foundation.errors import UserError, cli_command
from foundation.outputs import display_name, output_path, safe_name

from .cam import cam_method, faithfulness
from .inference import to_input
from .model import Classifier
from .plots import overlay_figure, save_figure


def write_overlays(model: Classifier, images_u8: torch.Tensor, names: list[str], classes: tuple[str, ...],
                   size: int, device: torch.device, method: str, out_dir: Path, target_class: str | None = None,
                   batch_size: int = 16) -> tuple[list[Path], dict[str, float]]:
    """Overlays of uint8 images ``(N, 1, S, S)`` as ``out_dir/<name>_<class>_p<probability>.png`` (300 dpi),
    in batches; every file lies in ``out_dir`` itself, whatever ``names`` and ``classes`` hold
    (:func:`foundation.outputs.output_path`).

    Returns the written paths and the faithfulness of the maps (average drop, increase in confidence).
    """
    if target_class is not None and target_class not in classes:
        raise UserError(f"--target-class {target_class}: not one of the model's classes ({', '.join(classes)})")
    target = None if target_class is None else classes.index(target_class)
    written, drops, increases, n = [], 0.0, 0.0, 0
    with cam_method(method, model) as cam:
        for start in range(0, len(images_u8), batch_size):
            x = to_input(images_u8[start:start + batch_size], size, device)
            maps, tgt, prob = cam(x, target)
            f = faithfulness(model, x, maps, tgt, prob)
            drops, increases, n = drops + f["average_drop_pct"] * len(x), increases + f["increase_in_confidence_pct"] * len(x), n + len(x)
            gray = (x[:, 0].cpu().numpy() * 255).round().astype(np.uint8)
            for i in range(len(x)):
                c = int(tgt[i])
                stem = f"{safe_name(Path(names[start + i]).stem)}_{safe_name(classes[c])}_p{prob[i, c]:.2f}"
                fig = overlay_figure(gray[i], maps[i].cpu().numpy(), classes[c], float(prob[i, c]),
                                     f"{display_name(Path(names[start + i]).name)}: {cam.label}")
                written += save_figure(fig, output_path(out_dir, stem, flat=True), formats=("png",))
    return written, {"average_drop_pct": drops / max(n, 1), "increase_in_confidence_pct": increases / max(n, 1)}


def read_images(paths: list[str | Path], size: int, resize: str = "crop", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """uint8 ``(N, 1, size, size)`` of image files (any format the data stage reads)."""
    if not paths:
        raise UserError(f"no images given; name one or more X-ray files, e.g. {cli_command()} cam runs/demo-data/covid/covid_00000.png")
    out = []
    for p in paths:
        try:
            out.append(decode_to_square(Path(p), size, resize, max_pixels))
        except (UnreadableImage, OSError) as e:
            raise UserError(f"{p}: cannot read this image ({e}); give PNG, JPEG, TIFF or DICOM files") from e
    return torch.from_numpy(np.stack(out)).unsqueeze(1)


def explain_files(paths: list[str | Path], checkpoint: str | Path | None = None, out: str | Path = "runs",
                  method: str = "gradcampp", target_class: str | None = None, device: str = "auto",
                  lung_masker: LungMasker | None = None) -> list[Path]:
    """Overlays of image files by a classifier (default: the latest run), in ``<run>/cam/<method>``. A run
    trained with lung settings needs ``lung_masker`` (the segmenter of its ``data.lungseg_run``): it sees,
    and the overlays show, each image cropped and masked as its training images were."""
    from foundation.devices import pick_device
    from foundation.runs import resolve_run_file

    from .checkpoint import CHECKPOINTS, data_config, load_classifier, run_lung_masker
    dev = pick_device(device)
    ckpt_path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    model, ckpt = load_classifier(ckpt_path, dev)
    data = data_config(ckpt)
    images, faint = lung_view(read_images(list(paths), data.decode_size, data.resize, data.max_pixels), data,
                              run_lung_masker(ckpt, ckpt_path, lung_masker))
    warn_lungs_not_found([str(p) for p, f in zip(paths, faint.tolist()) if f], len(paths), data)
    written, _ = write_overlays(model, images, [str(p) for p in paths], tuple(ckpt["classes"]), ckpt["input_size"],
                                dev, method, ckpt_path.parent / "cam" / method, target_class)
    return written
