"""``export``: a trained classifier as one file a deployment team runs without the toolkit (TorchScript, or ONNX
where the ``onnx`` package is installed), the preprocessing inside, and a model card beside it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundation.errors import UserError
from foundation.files import json_safe, write_text_atomic
from foundation.runs import resolve_run_file

from .checkpoint import CHECKPOINTS, data_config, load_classifier, tta_views
from .config import EvalConfig
from .inference import mean_probabilities
from .predict import validation_threshold

Format = Literal["torchscript", "onnx"]


class Deployable(nn.Module):
    """Films ``uint8 (N, 1, S, S)`` (decoded, gray, made square at the run's ``data.size`` as the toolkit does) →
    class probabilities ``float32 (N, K)``: scaled to [0, 1], resized to the model's input as ``predict`` does
    (bilinear, antialiased), the model (its intensity normalisation is inside it), softmax, averaged over the
    run's ``eval.tta`` shifted copies as ``predict`` does."""

    def __init__(self, model: nn.Module, size: int, tta: int = 0):
        super().__init__()
        self.model, self.size, self.tta = model.eval(), size, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return mean_probabilities(self.model, x, self.tta)


def export_model(checkpoint: str | Path | None = None, out: str | Path = "runs", fmt: Format = "torchscript",
                 dest: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``model.pt`` (TorchScript) or ``model.onnx`` and ``model_card.md``/``.json`` to ``dest`` (default
    ``<run>/export/``) for a classifier run (default: the latest under ``out``). Returns the model file."""
    path = resolve_run_file(checkpoint, out, "classifier", CHECKPOINTS)
    model, ckpt = load_classifier(path, torch.device("cpu"))
    data = data_config(ckpt)
    if data.uses_lungs:
        raise UserError(f"{path}: trained on {data.lung_settings}, which need the lung segmenter at prediction time; "
                        "export a run trained on whole films")
    dest = Path(dest) if dest is not None else path.parent / "export"
    target = dest / ("model.pt" if fmt == "torchscript" else "model.onnx")
    if target.exists() and not overwrite:
        raise UserError(f"{target}: an export is already there; pass --overwrite or choose another --dest")
    dest.mkdir(parents=True, exist_ok=True)
    deployable = Deployable(model.float(), ckpt["input_size"], tta_views(ckpt)).eval()
    example = torch.zeros(2, 1, data.size, data.size, dtype=torch.uint8)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        if fmt == "torchscript":
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(deployable, example), str(tmp))
        else:
            _export_onnx(deployable, example, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    card = model_card(path, ckpt, data.size, target.name)
    write_text_atomic(dest / "model_card.json", json.dumps(json_safe(card), indent=2) + "\n")
    write_text_atomic(dest / "model_card.md", card_markdown(card))
    print(f"wrote {target}, model_card.md and model_card.json")
    return target


def _export_onnx(deployable: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX through ``torch.export`` (the TorchScript exporter has no antialiased resize), any batch size."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError("--format onnx needs the onnx and onnxscript packages: pip install 'cxrgan[onnx]' "
                        "(or export --format torchscript)") from e
    torch.onnx.export(deployable, (example,), str(path), input_names=["films"], output_names=["probabilities"],
                      dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False)


def model_card(path: Path, ckpt: dict, size: int, file: str) -> dict:
    """What a deployment needs to know of the run: classes, input, the validation-chosen threshold, the data it
    saw and how it scored (the run's own evaluation when there is one, else its best validation epoch)."""
    cfg = EvalConfig(**ckpt["config"].get("eval", {}))
    threshold, note = validation_threshold(ckpt, cfg)
    evaluated = path.parent / "eval" / "metrics.json"
    metrics = json.loads(evaluated.read_text()) if evaluated.exists() else json.loads(
        (path.parent / "best_metrics.json").read_text())
    return {"model_file": file, "run": str(path.parent), "checkpoint": path.name, "classes": list(ckpt["classes"]),
            "backbone": ckpt["config"]["model"]["backbone"],
            "input": {"dtype": "uint8", "shape": ["N", 1, size, size],
                      "preprocessing": f"decode to 8-bit gray, make square at {size} px ({ckpt['config']['data'].get('resize', 'crop')}: "
                                       "the toolkit's data.resize), as uint8; scaling, resizing to the model's "
                                       f"{ckpt['input_size']} px and intensity normalisation happen inside the model"},
            "output": "class probabilities, float32 (N, K), in the order of classes",
            "threshold": {"class": cfg.positive_class, "value": threshold, "note": note},
            "data_fingerprint": ckpt.get("data_fingerprint"),
            "metrics": {"split": metrics.get("split", "val"), "accuracy": metrics.get("accuracy"),
                        "accuracy_ci": metrics.get("accuracy_ci"), "macro_auc": metrics.get("macro", {}).get("auc"),
                        "sensitivity": {c: p.get("sensitivity") for c, p in metrics.get("per_class", {}).items()}}}


def card_markdown(card: dict) -> str:
    m, t = card["metrics"], card["threshold"]
    lines = [f"# Model card: {card['backbone']} ({card['model_file']})", "",
             f"- Run: `{card['run']}` ({card['checkpoint']}); data fingerprint `{card['data_fingerprint']}`.",
             f"- Classes, in output order: {', '.join(card['classes'])}.",
             f"- Input: {card['input']['dtype']} {card['input']['shape']}; {card['input']['preprocessing']}.",
             f"- Output: {card['output']}.",
             f"- Operating point: {t['class']} when its probability ≥ {t['value']:.6g}, chosen on validation data"
             if t["value"] is not None else f"- Operating point: the most probable class ({t['note']}).",
             f"- Scored on the {m['split']} split: accuracy {m['accuracy']}"
             + (f" [{m['accuracy_ci'][0]:.3f}, {m['accuracy_ci'][1]:.3f}]" if m.get("accuracy_ci") else "")
             + f", macro AUC {m['macro_auc']}; sensitivity " + ", ".join(f"{c} {v:.3f}" for c, v in m["sensitivity"].items()
                                                                          if v is not None) + ".",
             "- Research use: read the toolkit's audit of this run before trusting it on another hospital's films."]
    return "\n".join(lines) + "\n"
