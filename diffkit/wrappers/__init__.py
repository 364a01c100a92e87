"""Model wrappers: the guidance stage (classifier-free, classifier) and inverse problems
(inpainting, colorization), each a `ScoreModel` around a `ScoreModel`."""

from diffkit.wrappers.guidance import CFGModel, ClassifierGuidedModel, cfg, classifier
from diffkit.wrappers.inverse import InverseModel, Measurement, colorize, inpaint

__all__ = [
    "CFGModel",
    "ClassifierGuidedModel",
    "InverseModel",
    "Measurement",
    "cfg",
    "classifier",
    "colorize",
    "inpaint",
]
