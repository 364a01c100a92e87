"""diffkit: diffusion-model noise processes, score models and samplers, composed by plugins."""

from diffkit.errors import (
    CompositionError,
    DiffkitError,
    DuplicateComponentError,
    OptionError,
    PluginLoadWarning,
    SamplingError,
    UnknownComponentError,
    UsageError,
)
from diffkit.hookspecs import hookimpl
from diffkit.model import Prediction, ScoreModel
from diffkit.process import LinearGaussianProcess, NoiseProcess
from diffkit.registry import Registrar, Registry, build_registry
from diffkit.sampler import Capabilities, Sampler, SampleResult, StepInfo

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CompositionError",
    "DiffkitError",
    "DuplicateComponentError",
    "LinearGaussianProcess",
    "NoiseProcess",
    "OptionError",
    "PluginLoadWarning",
    "Prediction",
    "Registrar",
    "Registry",
    "SampleResult",
    "Sampler",
    "SamplingError",
    "ScoreModel",
    "StepInfo",
    "UnknownComponentError",
    "UsageError",
    "build_registry",
    "hookimpl",
]
