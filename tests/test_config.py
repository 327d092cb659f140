"""Typed configuration: YAML files and --set overrides over dataclass defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from augment.data import DataConfig
from augment.transforms import AugmentConfig
from foundation.config import config_to_dict, load_config, save_config
from foundation.errors import UserError


@dataclass
class Train:
    lr: float = 1e-3
    epochs: int = 3
    amp: bool = True
    betas: tuple[float, float] = (0.5, 0.999)
    milestones: tuple[int, ...] = (10, 20)
    mode: Literal["fast", "exact"] = "fast"
    limit: Optional[int] = None
    name: str = "run"

    def check(self):
        if self.epochs <= 0:
            raise ValueError(f"train.epochs must be positive, got {self.epochs}")


@dataclass
class Top:
    train: Train = field(default_factory=Train)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def test_defaults_without_file_or_overrides():
    assert load_config(Top) == Top()


def test_yaml_overrides_only_what_it_names(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 0.01\n  betas: [0.9, 0.99]\ndata:\n  size: 64\n")
    cfg = load_config(Top, tmp_path / "c.yaml")
    assert cfg.train.lr == 0.01 and cfg.train.betas == (0.9, 0.99) and cfg.data.size == 64
    assert cfg.train.epochs == 3 and cfg.data.classes == ("covid", "normal", "pneumonia")


def test_empty_yaml_is_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("# nothing yet\n")
    assert load_config(Top, tmp_path / "c.yaml") == Top()


@pytest.mark.parametrize("item,attr,value", [
    ("train.epochs=7", "epochs", 7),
    ("train.lr=0.5", "lr", 0.5),
    ("train.lr=1e-4", "lr", 1e-4),          # YAML 1.1 reads this as text; it is still a float
    ("train.lr=2", "lr", 2.0),
    ("train.amp=false", "amp", False),
    ("train.betas=[0.8,0.9]", "betas", (0.8, 0.9)),
    ("train.betas=[1e-1, 2e-1]", "betas", (0.1, 0.2)),
    ("train.milestones=[5]", "milestones", (5,)),
    ("train.milestones=[]", "milestones", ()),
    ("train.mode=exact", "mode", "exact"),
    ("train.limit=12", "limit", 12),
    ("train.limit=null", "limit", None),
    ("train.name=42", "name", "42"),
    ("train.name=yes", "name", "yes"),      # text fields keep the text as typed
    ("train.name=", "name", ""),
])
def test_set_is_typed(item, attr, value):
    got = getattr(load_config(Top, None, [item]).train, attr)
    assert got == value and type(got) is type(value)


def test_set_after_yaml_wins(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  size: 64\n")
    assert load_config(Top, tmp_path / "c.yaml", ["data.size=128"]).data.size == 128


@pytest.mark.parametrize("item,match", [
    ("train.lrr=1", r"unknown config key 'train.lrr'; valid keys here: lr, epochs, amp"),
    ("nope=1", r"unknown config key 'nope'; valid keys here: train, data, augment"),
    ("train=1", r"'train' is a section; set one of its keys: lr, epochs"),
    ("train.epochs=many", r"'train.epochs' must be int, got 'many'"),
    ("train.epochs=2.5", r"'train.epochs' must be int"),
    ("train.amp=3", r"'train.amp' must be bool"),
    ("train.lr=fast", r"'train.lr' must be float"),
    ("train.lr=true", r"'train.lr' must be float"),
    ("train.betas=0.5", r"'train.betas' must be a list"),
    ("train.betas=[1,2,3]", r"'train.betas' must have 2 items"),
    ("train.mode=slow", r"'train.mode': 'slow' is not one of fast, exact"),
    ("train.limit=lots", r"'train.limit' must be int"),
    ("train.epochs", r"expected key=value"),
    ("=3", r"expected key=value"),
])
def test_bad_overrides_are_one_line(item, match):
    with pytest.raises(UserError, match=match) as e:
        load_config(Top, None, [item])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("item,match", [
    ("train.epochs=0", "train.epochs must be positive"),
    ("train.epochs=-2", "train.epochs must be positive"),
    ("data.size=0", "data.size must be at least 8"),
    ("data.split_fractions=[0.5,0.5,0.5]", "sum to 1"),
    ("data.split_fractions=[1.2,-0.1,-0.1]", "non-negative"),
    ("data.classes=[covid,covid]", "distinct"),
    ("augment.degrees=-5", "must be >= 0"),
    ("augment.hflip=1.5", "probability"),
    ("augment.crop_scale=[0,1]", "crop_scale"),
    ("augment.crop_ratio=[0,1]", "crop_ratio"),
    ("augment.gamma=[0,1]", "gamma"),
    ("augment.translate=2", "translate"),
])
def test_check_errors_name_the_section(item, match):
    with pytest.raises(UserError, match=match) as e:
        load_config(Top, None, [item])
    assert str(e.value).startswith("invalid config in ") and "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [
    (b"train: [unclosed\n", "not valid YAML"),
    (b"train:\n  lr: 1\n lr: 2\n", "not valid YAML"),
    (b"- 1\n- 2\n", "must be a mapping"),
    (b"train:\n  name: \xff\xfe\n", "not UTF-8"),
])
def test_bad_yaml_file_is_one_line(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        load_config(Top, path)
    assert "\n" not in str(e.value) and "bad.yaml" in str(e.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(UserError, match="cannot read config file"):
        load_config(Top, tmp_path / "none.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Top, None, ["train.lr=1e-4", "train.milestones=[1,2,3]", "data.resize=pad"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config_to_dict(cfg)
    assert load_config(Top, tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("command", ["gan-train", "classify-train", "lungseg-train"])
@pytest.mark.slow
def test_print_config_prints_what_the_run_writes_as_config_yaml(tmp_path, command):
    """--print-config exits 0 with the resolved config, and a run with the same options writes the same text."""
    from click.testing import CliRunner

    from augment.phantoms import write_phantoms
    from cli import cli
    data = write_phantoms(tmp_path / "data", 12, 32, seed=0, masks=command == "lungseg-train")
    sets = {"gan-train": ["data.size=32", "model.ngf=4", "model.ndf=4", "model.n_blocks=1", "train.steps=1",
                          "train.tensorboard=false"],
            "classify-train": ["data.size=32", "model.backbone=shallow", "model.width=4", "model.input_size=32",
                               "train.epochs=1", "train.tensorboard=false"],
            "lungseg-train": ["data.size=32", "model.width=4", "model.depth=2", "train.epochs=1",
                              "train.tensorboard=false", "eval.bootstrap=10"]}[command]
    args = [command, "--data", str(data), "--out", str(tmp_path / "runs"), "--device", "cpu",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *[x for s in sets for x in ("--set", s)]]
    printed = CliRunner().invoke(cli, [*args, "--print-config"])
    assert printed.exit_code == 0, printed.output[-1500:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/*/config.yaml"))
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output[-1500:]
    [written] = (tmp_path / "runs").glob("*/*/config.yaml")
    assert printed.stdout == written.read_text()
