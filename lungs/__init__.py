"""Lung segmentation of chest X-rays: a small U-Net (Ronneberger et al. 2015) trained from scratch on
image/mask pairs, and the masks it draws. A package of its own beside ``classifier``: the audit of a
classifier needs both, and neither model package imports the other."""
from .config import LungsegConfig
from .inference import LungSegmenter, masker_for, segment_files
from .train import train_lungseg

__all__ = ["LungsegConfig", "LungSegmenter", "masker_for", "segment_files", "train_lungseg"]
