"""Chest X-ray classifiers: backbone registry and heads, two-phase training, evaluation with
bootstrap intervals, and class activation maps."""
from .backbones import list_backbones
from .cam import CAM, GradCAM, GradCAMPlusPlus
from .config import ClassifierConfig
from .evaluate import evaluate
from .model import Classifier, create_model
from .train import train

__all__ = ["CAM", "Classifier", "ClassifierConfig", "GradCAM", "GradCAMPlusPlus", "create_model", "evaluate",
           "list_backbones", "train"]
