"""The classifier commands of cli.py: flags reach the config, and evaluate and cam find the run."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from augment.phantoms import write_phantoms
from cli import cli

DEMO = Path(__file__).resolve().parents[1] / "configs" / "classify-train-demo.yaml"


@pytest.mark.slow
def test_classify_train_evaluate_cam_chain(tmp_path):
    data = write_phantoms(tmp_path / "data", 12, size=32, seed=0)
    out = tmp_path / "runs"
    common = ["--data", str(data), "--config", str(DEMO), "--out", str(out), "--device", "cpu",
              "--set", "data.size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    runner = CliRunner()
    r = runner.invoke(cli, ["classify-train", *common, "--backbone", "resnet18", "--set", "model.input_size=32",
                            "--set", "train.epochs=1", "--set", "train.tensorboard=false"])
    assert r.exit_code == 0, r.output
    run = next((out / "classifier").iterdir())
    assert "backbone: resnet18" in (run / "config.yaml").read_text()
    r = runner.invoke(cli, ["evaluate", *common, "--set", "eval.bootstrap=20", "--cam", "1"])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and json.loads((run / "eval" / "metrics.json").read_text())["bootstrap_rounds"] == 20
    r = runner.invoke(cli, ["cam", "--out", str(out), "--device", "cpu", "--method", "gradcam",
                            str(data / "covid" / "covid_00000.png"), str(data / "normal" / "normal_00000.png")])
    assert r.exit_code == 0, r.output
    assert len(list((run / "cam" / "gradcam").glob("*.png"))) == 2
    r = runner.invoke(cli, ["cam", "--out", str(out), "--device", "cpu", str(tmp_path / "missing.png")])
    assert r.exit_code == 2 and "missing.png" in r.output and "Traceback" not in r.output


def test_resume_refuses_config_changes(tmp_path):
    r = CliRunner().invoke(cli, ["classify-train", "--resume", str(tmp_path), "--backbone", "vgg16"])
    assert r.exit_code == 2 and "keeps its own config" in r.output


def test_cpu_preset_is_one_flag(tmp_path):
    data = write_phantoms(tmp_path / "data", 12, size=32, seed=0)
    out = tmp_path / "runs"
    r = CliRunner().invoke(cli, ["classify-train", "--preset", "cpu", "--data", str(data), "--out", str(out),
                                 "--device", "cpu", "--backbone", "shallow", "--set", "data.size=32",
                                 "--set", "model.input_size=32", "--set", "train.epochs=1", "--set", "train.time_budget=",
                                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.tensorboard=false"])
    assert r.exit_code == 0, r.output
    config = next((out / "classifier").iterdir()).joinpath("config.yaml").read_text()
    assert "cpu_bf16: true" in config and "ema: 0.99" in config  # the preset's values, not the defaults
    r = CliRunner().invoke(cli, ["classify-train", "--preset", "cpu", "--data", str(data), "--print-config"])
    assert r.exit_code == 0 and "time_budget: usual" in r.output  # the usual recipe's time here, by default
    r = CliRunner().invoke(cli, ["classify-train", "--preset", "cpu", "--config", str(DEMO)])
    assert r.exit_code == 2 and "give one of them" in r.output
