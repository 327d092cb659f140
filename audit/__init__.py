"""The shortcut audit of a trained classifier: is it looking at the lungs? Checks whether its class
activation maps fall inside the lungs, whether its features predict the image source, and what it scores
with the lungs hidden (Majeed et al. 2020; DeGrave et al. 2021; Maguolo & Nanni 2021). The one package that
needs both a classifier and the lung segmenter; only ``cli.py`` imports it."""
from .run import run_audit

__all__ = ["run_audit"]
