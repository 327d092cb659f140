"""The toolkit as installed: shipped configs (one source of defaults, read through importlib.resources),
the command that hints name, --version, and the licence metadata. .ci/installed.sh checks a built wheel."""
from __future__ import annotations

import configparser
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import foundation.config
import foundation.errors
from augment.phantoms import write_phantoms
from classifier.config import ClassifierConfig
from cli import DEFAULT_CONFIGS, PRESETS, cli
from cyclegan import GanConfig
from foundation.config import config_source, load_config, local_or_shipped, shipped_config, shipped_configs
from foundation.errors import UserError
from lungs import LungsegConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_CLASSES = {"classify-train": ClassifierConfig, "gan-train": GanConfig, "lungseg-train": LungsegConfig}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def named_configs() -> set[str]:
    """Every config file the CLI names itself (defaults of commands and their demos, presets)."""
    return {name for pair in DEFAULT_CONFIGS.values() for name in pair if name} | set(PRESETS.values())


def config_class(name: str) -> type:
    """The config class of ``configs/<name>``, by the command its name starts with."""
    [command] = [c for c in CONFIG_CLASSES if name.startswith(c)]
    return CONFIG_CLASSES[command]


REPO_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


def test_every_config_is_shipped_and_every_name_the_cli_uses_is_among_them():
    shipped = {p.name for p in shipped_configs().iterdir() if p.name.endswith(".yaml")}
    assert set(REPO_CONFIGS) == shipped and named_configs() <= shipped


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_shipped_config_is_the_repository_file_and_only_overrides_keys_the_code_has(name):
    """The file a command reads is configs/<name> itself (one source, whether run from the checkout or
    installed), named for a command, and every key it sets exists in that command's dataclasses (a renamed
    field fails here, not at a user's run)."""
    path = shipped_config(name)
    assert path.read_bytes() == (ROOT / "configs" / name).read_bytes()
    cfg = load_config(config_class(name), path)
    assert config_source(cfg) == {"file": str(path), "overrides": []}
    assert cfg == load_config(config_class(name), ROOT / "configs" / name)


def test_config_under_configs_that_is_not_here_is_the_shipped_one(tmp_path, monkeypatch):
    """Commands written against the repository (--config configs/classify-train-cpu.yaml) work from any folder."""
    monkeypatch.chdir(tmp_path)
    assert local_or_shipped(Path("configs/classify-train-cpu.yaml")) == shipped_config("classify-train-cpu.yaml")
    assert local_or_shipped(Path("configs/none.yaml")) == Path("configs/none.yaml")  # not shipped: as given
    assert local_or_shipped(Path("other/classify-train-cpu.yaml")) == Path("other/classify-train-cpu.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "classify-train-cpu.yaml").write_text("train:\n  epochs: 1\n")
    assert local_or_shipped(Path("configs/classify-train-cpu.yaml")) == Path("configs/classify-train-cpu.yaml")
    r = CliRunner().invoke(cli, ["evaluate", "--config", "configs/missing.yaml", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "configs/missing.yaml: cannot read config file" in r.output


def test_setup_cfg_installs_configs_as_package_data_of_cxrgan_configs():
    options = setup_cfg()["options"]
    packages = [p.strip() for p in options["packages"].split(",")]
    mapping = dict(line.split("=") for line in options["package_dir"].strip().splitlines())
    assert {k.strip(): v.strip() for k, v in mapping.items()} == {foundation.config.SHIPPED_PACKAGE: "configs"}
    # every package of the repository is listed (the list replaced setuptools' find:)
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"configs", "tests"}
    assert found <= set(packages) and foundation.config.SHIPPED_PACKAGE in packages
    patterns = setup_cfg()["options.package_data"][foundation.config.SHIPPED_PACKAGE].split()
    for name in REPO_CONFIGS:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_a_missing_shipped_config_is_an_error_not_the_defaults_in_code(tmp_path, monkeypatch):
    """What an installation without its configs did: classify-train --data DIR trained the code defaults."""
    monkeypatch.setattr(foundation.config, "shipped_configs", lambda: tmp_path / "empty")
    r = CliRunner().invoke(cli, ["classify-train", "--data", str(tmp_path), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "the shipped config classify-train.yaml is missing from this installation" in r.output
    r = CliRunner().invoke(cli, ["classify-train", "--preset", "cpu", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "classify-train-cpu.yaml is missing" in r.output
    with pytest.raises(UserError, match="gan-train-demo.yaml is missing"):
        shipped_config("gan-train-demo.yaml")


def test_classify_train_with_data_reads_the_shipped_recipe_and_records_it(tmp_path, one_thread):
    data = write_phantoms(tmp_path / "data", 6, size=32, seed=0)
    out = tmp_path / "runs"
    tiny = ["model.backbone=shallow", "model.width=8", "data.size=32", "model.input_size=32", "train.epochs=1",
            "train.batch_size=8", "train.tensorboard=false", f"data.cache_dir={tmp_path / 'cache'}"]
    r = CliRunner().invoke(cli, ["classify-train", "--data", str(data), "--out", str(out), "--device", "cpu",
                                 *[f"--set={s}" for s in tiny]])
    assert r.exit_code == 0, r.output
    [run] = (out / "classifier").iterdir()
    recipe = shipped_config("classify-train.yaml")
    expected = load_config(ClassifierConfig, recipe, tiny)
    assert yaml.safe_load((run / "config.yaml").read_text()) == foundation.config.config_to_dict(expected)
    assert expected.train.warmup_epochs_unnormalised == 12 and expected.eval.specificity == 0.9  # the recipe's
    info = json.loads((run / "run.json").read_text())
    assert info["config_file"] == str(recipe) and info["config_overrides"] == tiny
    assert f"evaluate with: cxrgan evaluate --checkpoint {run}" in r.output  # the command of an installation


def test_hints_name_the_command_that_was_typed(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cxrgan", "classify-train"])
    assert foundation.errors.cli_command() == "cxrgan"
    monkeypatch.setattr(sys, "argv", ["cli.py", "classify-train"])
    assert foundation.errors.cli_command() == "python cli.py"
    monkeypatch.setattr(sys, "argv", ["../my code/cli.py", "classify-train"])
    assert foundation.errors.cli_command() == "python '../my code/cli.py'"  # as typed, quoted for the shell
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert foundation.errors.cli_command() == "cxrgan"  # a Python user of the packages


def test_version_names_the_release_and_where_it_runs_from():
    version = setup_cfg()["metadata"]["version"]
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.output.startswith(f"cxrgan {version} ") and str(ROOT) in r.output
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT.parent)
    assert out.returncode == 0 and out.stdout.startswith(f"cxrgan {version} "), out.stderr


def test_license_and_citation_match_the_metadata():
    meta = setup_cfg()["metadata"]
    assert meta["license"] == "MIT" and meta["license_files"].strip() == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert str(citation["version"]) == meta["version"]
    assert {"message", "title", "authors"} <= set(citation)


# Each package may import only the floors below it; cli.py and experiments/ sit on top of everything.
FLOORS = {"foundation": set(), "augment": {"foundation"}, "cyclegan": {"foundation", "augment"},
          "classifier": {"foundation", "augment"}, "lungs": {"foundation", "augment"},
          "audit": {"foundation", "augment", "classifier", "lungs"},
          "ablation": {"foundation", "augment", "cyclegan", "classifier", "lungs"}}


def imported_packages(package: str) -> dict[str, set[str]]:
    """For each module of ``package``, the toolkit packages (and ``cli``) it imports, lazily or not."""
    import ast
    known = set(FLOORS) | {"cli"}
    found = {}
    for path in sorted((ROOT / package).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
        found[path.name] = (names & known) - {package}
    return found


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_imports_only_run_down_the_floors(package):
    wrong = {module: sorted(names - FLOORS[package]) for module, names in imported_packages(package).items()
             if names - FLOORS[package]}
    assert not wrong, f"{package} imports a package above it or beside it: {wrong}"


def test_the_foundation_is_split_by_concern_and_augment_holds_only_the_data_stage():
    foundation_modules = {p.stem for p in (ROOT / "foundation").glob("*.py")}
    assert {"devices", "checkpoints", "runs", "distributed", "signals", "loop", "config", "errors"} <= foundation_modules
    assert not foundation_modules & {p.stem for p in (ROOT / "augment").glob("*.py")} - {"__init__"}
    too_long = {p.name: n for p in (ROOT / "foundation").glob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not too_long, f"split these by concern: {too_long}"
