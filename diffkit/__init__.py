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
from diffkit.parameterization import (
    EpsPrediction,
    Parameterization,
    ScorePrediction,
    VPrediction,
    X0Prediction,
)
from diffkit.process import DiscreteProcess, LinearGaussianProcess, NoiseProcess, discrete_process
from diffkit.registry import Registrar, Registry, build_registry
from diffkit.sampler import Capabilities, Sampler, SampleResult, StepInfo
from diffkit.traits import ProcessTraits, traits_of

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CompositionError",
    "DiffkitError",
    "DiscreteProcess",
    "DuplicateComponentError",
    "EpsPrediction",
    "LinearGaussianProcess",
    "NoiseProcess",
    "OptionError",
    "Parameterization",
    "PluginLoadWarning",
    "Prediction",
    "ProcessTraits",
    "Registrar",
    "Registry",
    "SampleResult",
    "Sampler",
    "SamplingError",
    "ScoreModel",
    "ScorePrediction",
    "StepInfo",
    "UnknownComponentError",
    "UsageError",
    "VPrediction",
    "X0Prediction",
    "build_registry",
    "discrete_process",
    "hookimpl",
    "traits_of",
]
