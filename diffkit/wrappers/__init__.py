"""Model wrappers: the guidance stage (classifier-free, classifier), inverse problems
(inpainting, colorization) and x0 clipping / dynamic thresholding, each a `ScoreModel` around
a `ScoreModel`."""

from diffkit.wrappers.guidance import CFGModel, ClassifierGuidedModel, cfg, classifier
from diffkit.wrappers.inverse import InverseModel, Measurement, colorize, inpaint
from diffkit.wrappers.thresholding import (
    ThresholdedModel,
    ThresholdedPrediction,
    clip,
    clip_x0,
    dynamic_threshold,
    dynamic_thresholding,
    threshold_scale,
)

__all__ = [
    "CFGModel",
    "ClassifierGuidedModel",
    "InverseModel",
    "Measurement",
    "ThresholdedModel",
    "ThresholdedPrediction",
    "cfg",
    "classifier",
    "clip",
    "clip_x0",
    "colorize",
    "dynamic_threshold",
    "dynamic_thresholding",
    "inpaint",
    "threshold_scale",
]
