"""diffkit: diffusion-model noise processes, score models and samplers, composed by plugins."""

from diffkit.core.errors import (
    CompositionError,
    DiffkitError,
    DuplicateComponentError,
    OptionError,
    PluginLoadWarning,
    SamplingError,
    UnknownComponentError,
    UsageError,
)
from diffkit.core.model import Prediction, ScoreModel
from diffkit.core.parameterization import (
    EpsPrediction,
    Parameterization,
    ScorePrediction,
    VPrediction,
    X0Prediction,
)
from diffkit.core.process import DiscreteProcess, LinearGaussianProcess, NoiseProcess, discrete_process
from diffkit.core.sampler import Capabilities, Sampler, SampleResult, StepInfo
from diffkit.core.traits import ProcessTraits, traits_of
from diffkit.plugin.hookspecs import hookimpl
from diffkit.plugin.registry import Registrar, Registry, build_registry

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
