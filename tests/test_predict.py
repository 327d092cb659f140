"""predict: predictions.csv for files and folders of new films, as the run's data stage would see them."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from augment.data import decode_to_square
from augment.phantoms import write_phantoms
from classifier.checkpoint import data_config, load_classifier
from classifier.config import ClassifierConfig
from classifier.inference import predict, shifted_views
from classifier.metrics import sensitivity_at_specificity
from classifier.predict import predict_files
from classifier.train import train
from cli import cli
from foundation.checkpoints import load_checkpoint
from foundation.config import load_config
from foundation.errors import UserError

CLASSES = ("covid", "normal", "pneumonia")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny classifier run whose data stage pads (not the default crop), so predict must use the run's
    resize mode to match it."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_phantoms(tmp / "data", 12, size=32, seed=0)
    cfg = load_config(ClassifierConfig, None, [
        "data.size=32", "data.resize=pad", f"data.cache_dir={tmp / 'cache'}", "model.backbone=shallow",
        "model.width=8", "model.input_size=32", "train.epochs=2", "train.batch_size=8", "train.tensorboard=false"])
    return train(cfg, data, tmp / "runs", device="cpu", quiet=True)


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """New films in nested folders: non-square PNG, RGB JPEG and 16-bit TIFF, a damaged PNG, a text
    file and a hidden file. Returns the folder, the readable files and the unreadable ones."""
    root = tmp_path_factory.mktemp("films") / "new"
    src = write_phantoms(root.parent / "src", 2, size=48, seed=3)
    readable = []
    for i, c in enumerate(CLASSES):
        for j, png in enumerate(sorted((src / c).glob("*.png"))):
            img = np.asarray(Image.open(png))[:, 4 + 4 * j:]  # 48 x 40 or 36: crop and pad differ
            folder = root / c / ("deeper" if j else "")
            folder.mkdir(parents=True, exist_ok=True)
            if (i + j) % 3 == 0:
                path = folder / f"{c}{j}.png"
                Image.fromarray(img).save(path)
            elif (i + j) % 3 == 1:
                path = folder / f"{c}{j}.jpg"
                Image.fromarray(np.stack([img] * 3, -1)).save(path, quality=95)
            else:
                path = folder / f"{c}{j}.tif"
                Image.fromarray(img.astype(np.uint16) * 257).save(path)
            readable.append(path)
    (root / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not a film")
    (root / ".hidden.png").write_bytes(b"")
    return root, readable, [root / "damaged.png", root / "notes.txt"]


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_one_row_per_file_with_probabilities_of_the_data_stage(run, films, tmp_path):
    root, readable, unreadable = films
    result = predict_files([root], run, dest=tmp_path / "p", device="cpu", batch_size=4, quiet=True)
    columns, rows = read_rows(tmp_path / "p" / "predictions.csv")
    assert columns == ["path", "predicted", "prob_covid", "prob_normal", "prob_pneumonia", "threshold", "error"]
    by_path = {Path(r["path"]): r for r in rows}
    assert sorted(by_path) == sorted(readable + unreadable)  # folders recursed, hidden file left out
    assert (result["images"], result["unreadable"]) == (len(readable), 2)
    assert "damaged" in by_path[root / "damaged.png"]["error"] and by_path[root / "damaged.png"]["predicted"] == ""
    assert "not an image suffix" in by_path[root / "notes.txt"]["error"]

    model, ckpt = load_classifier(run / "best.pt", torch.device("cpu"))
    data = data_config(ckpt)
    images = torch.from_numpy(np.stack([decode_to_square(p, data.size, data.resize) for p in readable])).unsqueeze(1)
    expected = predict(model, images, ckpt["input_size"], torch.device("cpu")).numpy()
    got = np.array([[float(by_path[p][f"prob_{c}"]) for c in CLASSES] for p in readable])
    assert np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.allclose(got, expected, atol=2e-6)
    assert all(by_path[p]["error"] == "" for p in readable)


def test_threshold_chosen_on_validation_calls_the_positive_class(run, films, tmp_path):
    root, readable, _ = films
    ckpt = load_checkpoint(run / "best.pt")
    val = ckpt["validation"]
    positive = val["labels"].numpy() == 0
    _, expected = sensitivity_at_specificity(positive, val["prob"].numpy()[:, 0], ckpt["config"]["eval"]["specificity"])
    result = predict_files(readable, run, dest=tmp_path / "p", device="cpu", quiet=True)
    assert result["threshold"] == pytest.approx(expected)
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(expected, rel=1e-5)
        prob = np.array([float(r[f"prob_{c}"]) for c in CLASSES])
        called = "covid" if prob[0] >= expected else CLASSES[1 + prob[1:].argmax()]
        assert r["predicted"] == called


def test_without_validation_predictions_argmax_and_the_column_says_so(run, films, tmp_path):
    root, readable, _ = films
    result = predict_files(readable, run / "last.pt", dest=tmp_path / "p", device="cpu", quiet=True)
    assert result["threshold"] is None and "validation predictions" in result["threshold_note"]
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    for r in rows:
        prob = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert r["threshold"] == "argmax" and r["predicted"] == CLASSES[int(np.argmax(prob))]


@pytest.mark.slow
def test_cam_writes_one_overlay_per_readable_image(run, films, tmp_path):
    root, readable, _ = films
    predict_files([root], run, dest=tmp_path / "p", cam=True, method="gradcam", device="cpu", quiet=True)
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    overlays = sorted((tmp_path / "p" / "cam").glob("*.png"))
    assert len(overlays) == len(readable)
    assert sorted(Path(r["cam"]) for r in rows if r["cam"]) == overlays
    assert all(r["cam"] == "" for r in rows if r["error"])

    # replaced by a prediction of one film, the folder keeps only that film's overlay
    predict_files(readable[-1:], run, dest=tmp_path / "p", cam=True, method="gradcam", overwrite=True,
                  device="cpu", quiet=True)
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    assert sorted((tmp_path / "p" / "cam").glob("*.png")) == [Path(rows[0]["cam"])]


def test_default_folder_and_refusal_without_overwrite(run, films, tmp_path):
    root, readable, _ = films
    first = predict_files([root], run, device="cpu", quiet=True)["csv"]
    assert first == run / "predictions" / "new" / "predictions.csv"
    try:
        before = first.read_text()
        with pytest.raises(UserError, match="--overwrite"):
            predict_files([root], run, device="cpu", quiet=True)
        assert first.read_text() == before
        predict_files(readable[:1], run, dest=first.parent, overwrite=True, device="cpu", quiet=True)
        assert len(read_rows(first)[1]) == 1
    finally:
        shutil.rmtree(run / "predictions")


def test_cli_writes_and_refuses_in_one_line(run, films, tmp_path):
    root, readable, _ = films
    runner = CliRunner()
    args = ["predict", "--checkpoint", str(run), "--dest", str(tmp_path / "p"), "--device", "cpu", str(root)]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"{len(readable)} images scored, 2 unreadable" in r.output and (tmp_path / "p" / "predictions.csv").exists()
    for bad, message in [(args, "--overwrite"),
                         (args[:-1] + [str(tmp_path / "missing")], "missing: no such file or folder"),
                         (args[:-1], "no images given"),
                         (["predict", "--checkpoint", str(tmp_path / "nothing"), str(root)], "no such checkpoint")]:
        r = runner.invoke(cli, bad)
        assert r.exit_code == 2 and r.output.startswith("error: ") and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_the_exported_model_gives_the_probabilities_of_predict_without_the_toolkit(run, films, tmp_path):
    """export writes a TorchScript file with the preprocessing inside; loaded by torch alone it gives the
    probabilities predict wrote for the same files (to 1e-5), and its model card names classes and threshold."""
    root, readable, _ = films
    predict_files([root], run, dest=tmp_path / "p", device="cpu", quiet=True)
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    by_path = {Path(r["path"]): r for r in rows}
    r = CliRunner().invoke(cli, ["export", "--checkpoint", str(run), "--dest", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    deployed = torch.jit.load(str(tmp_path / "x" / "model.pt"))
    data = data_config(load_checkpoint(run / "best.pt"))
    films_u8 = torch.from_numpy(np.stack([decode_to_square(p, data.size, data.resize) for p in readable])).unsqueeze(1)
    with torch.no_grad():
        got = deployed(films_u8).numpy()
    wanted = np.array([[float(by_path[p][f"prob_{c}"]) for c in CLASSES] for p in readable])
    assert np.allclose(got, wanted, atol=1e-5)
    card = (tmp_path / "x" / "model_card.md").read_text()
    assert "covid, normal, pneumonia" in card and "uint8" in card
    again = CliRunner().invoke(cli, ["export", "--checkpoint", str(run), "--dest", str(tmp_path / "x")])
    assert again.exit_code != 0 and "pass --overwrite" in again.output


def test_the_onnx_export_gives_the_torchscript_probabilities_at_any_batch_size(run, tmp_path):
    """``export --format onnx``, run by onnxruntime alone, equals the TorchScript export (to 1e-5) for batches of
    other sizes than the one it was traced with."""
    ort = pytest.importorskip("onnxruntime")
    for fmt in ("onnx", "torchscript"):
        r = CliRunner().invoke(cli, ["export", "--checkpoint", str(run), "--format", fmt, "--dest", str(tmp_path / fmt)])
        assert r.exit_code == 0, r.output
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    size = data_config(load_checkpoint(run / "best.pt")).size
    for n in (1, 5):
        films_u8 = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        got = session.run(None, {"films": films_u8.numpy()})[0]
        with torch.no_grad():
            wanted = torch.jit.load(str(tmp_path / "torchscript" / "model.pt"))(films_u8).numpy()
        assert got.shape == (n, len(CLASSES)) and np.allclose(got, wanted, atol=1e-5)


def test_shifted_views_move_the_film_by_about_3_percent_and_repeat_its_edge():
    x = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    right, left, down, up, diagonal = shifted_views(x, 5)
    s = 2  # 3 % of 64, rounded
    assert all(v.shape == x.shape for v in (right, left, down, up, diagonal)) and len(shifted_views(x, 8)) == 8
    assert torch.equal(right[..., s:], x[..., :-s]) and torch.equal(right[..., :s], x[..., :1].expand(-1, -1, -1, s))
    assert torch.equal(left[..., :-s], x[..., s:]) and torch.equal(down[..., s:, :], x[..., :-s, :])
    assert torch.equal(up[..., :-s, :], x[..., s:, :]) and torch.equal(diagonal[..., s:, s:], x[..., :-s, :-s])
    assert shifted_views(x, 0) == []
    with pytest.raises(UserError, match="eval.tta: the number of shifted copies, 0 to 8; got 9"):
        load_config(ClassifierConfig, None, ["eval.tta=9"])


def test_a_run_with_test_time_augmentation_predicts_and_exports_the_mean_over_its_shifted_copies(run, films, tmp_path):
    """``eval.tta`` of a run: predict gives the mean probabilities over the film and its shifted copies, and the
    exported model computes the same, so a deployment sees what evaluation saw."""
    root, readable, _ = films
    tta = shutil.copytree(run, tmp_path / "tta")
    state = load_checkpoint(tta / "best.pt")
    state["config"]["eval"]["tta"] = 3
    torch.save(state, tta / "best.pt")
    predict_files([root], tta, dest=tmp_path / "p", device="cpu", quiet=True)
    _, rows = read_rows(tmp_path / "p" / "predictions.csv")
    by_path = {Path(r["path"]): r for r in rows}
    got = np.array([[float(by_path[p][f"prob_{c}"]) for c in CLASSES] for p in readable])
    model, ckpt = load_classifier(tta / "best.pt", torch.device("cpu"))
    data = data_config(ckpt)
    films_u8 = torch.from_numpy(np.stack([decode_to_square(p, data.size, data.resize) for p in readable])).unsqueeze(1)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(films_u8.float() / 255, size=(ckpt["input_size"],) * 2, mode="bilinear",
                                            align_corners=False, antialias=True)
        views = [x, *shifted_views(x, 3)]
        wanted = torch.stack([model(v).float().softmax(1) for v in views]).mean(0).numpy()
    assert np.allclose(got, wanted, atol=1e-5)
    assert not np.allclose(got, predict(model, films_u8, ckpt["input_size"], torch.device("cpu"), bf16=False).numpy(),
                           atol=1e-4)  # the copies changed the probabilities
    r = CliRunner().invoke(cli, ["export", "--checkpoint", str(tta), "--dest", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        exported = torch.jit.load(str(tmp_path / "x" / "model.pt"))(films_u8).numpy()
    assert np.allclose(exported, wanted, atol=1e-5)


def test_evaluate_refuses_a_test_time_augmentation_the_run_did_not_choose_its_epoch_with(run, tmp_path):
    """``eval.tta`` is the run's: asking ``evaluate`` for another is refused in one line, not silently ignored."""
    copy = shutil.copytree(run, tmp_path / "run")
    r = CliRunner().invoke(cli, ["evaluate", "--data", str(run.parents[2] / "data"), "--checkpoint", str(copy),
                                 "--set", "eval.tta=2"])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert "eval.tta=2 asked, but this run chose its epoch and thresholds with eval.tta=0" in r.output
    assert not (copy / "eval").exists()
