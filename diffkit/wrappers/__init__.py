"""Model wrappers: the guidance stage (classifier-free, classifier), inverse problems
(inpainting, colorization) and x0 clipping / dynamic thresholding, each a `ScoreModel` around
a `ScoreModel`."""

from diffkit.wrappers.guidance import (
    CFGModel,
    ClassifierGuidedModel,
    apg,
    autoguidance,
    cfg,
    cfg_pp,
    cfg_rescale,
    classifier,
    interval,
)
from diffkit.wrappers.guidance_stage import GuidanceStep, GuidedModel, RenoisedPrediction
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
    "GuidanceStep",
    "GuidedModel",
    "InverseModel",
    "Measurement",
    "ThresholdedModel",
    "RenoisedPrediction",
    "ThresholdedPrediction",
    "apg",
    "autoguidance",
    "cfg",
    "cfg_pp",
    "cfg_rescale",
    "classifier",
    "clip",
    "clip_x0",
    "colorize",
    "dynamic_threshold",
    "dynamic_thresholding",
    "inpaint",
    "interval",
    "threshold_scale",
]
