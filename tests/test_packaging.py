"""The toolkit as installed: the command that hints name."""
from __future__ import annotations

import sys

import augment.errors


def test_hints_name_the_command_that_was_typed(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/cxrgan", "classify-train"])
    assert augment.errors.cli_command() == "cxrgan"
    monkeypatch.setattr(sys, "argv", ["cli.py", "classify-train"])
    assert augment.errors.cli_command() == "python cli.py"
    monkeypatch.setattr(sys, "argv", ["../my code/cli.py", "classify-train"])
    assert augment.errors.cli_command() == "python '../my code/cli.py'"  # as typed, quoted for the shell
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert augment.errors.cli_command() == "cxrgan"  # a Python user of the packages
