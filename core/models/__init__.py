"""Classifiers (WideResNet with Swish, SmallCNN) with penultimate features, their safetensors checkpoints, and
the diffusion UNet presets saved in the diffusers pipeline layout."""

from core.models.classifiers import ARCHS, ImageClassifier, SmallCNN, WideResNet, build_classifier
from core.models.io import load_classifier, read_classifier_config, save_classifier
from core.models.unet import UNET_PRESETS, build_unet, make_scheduler, save_diffusion

__all__ = [
    "ARCHS",
    "UNET_PRESETS",
    "ImageClassifier",
    "SmallCNN",
    "WideResNet",
    "build_classifier",
    "build_unet",
    "load_classifier",
    "make_scheduler",
    "read_classifier_config",
    "save_classifier",
    "save_diffusion",
]
