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
    VelocityPrediction,
    VPrediction,
    X0Prediction,
)
from diffkit.core.process import DiscreteProcess, LinearGaussianProcess, NoiseProcess, discrete_process
from diffkit.core.sampler import Capabilities, Sampler, SampleResult, StepInfo
from diffkit.core.schedules import (
    LinearBetaProcess,
    ddpm_cosine_alpha_bar,
    ddpm_linear_alpha_bar,
    vp_beta,
    vp_t_from_log_alpha,
)
from diffkit.core.traits import ProcessTraits, traits_of
from diffkit.plugin.hookspecs import hookimpl
from diffkit.plugin.loading import build_registry
from diffkit.plugin.options import validate_options
from diffkit.plugin.registry import Registrar, Registry
from diffkit.run.data import Dataset

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "CompositionError",
    "Dataset",
    "DiffkitError",
    "DiscreteProcess",
    "DuplicateComponentError",
    "EpsPrediction",
    "LinearBetaProcess",
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
    "VelocityPrediction",
    "X0Prediction",
    "build_registry",
    "ddpm_cosine_alpha_bar",
    "ddpm_linear_alpha_bar",
    "discrete_process",
    "hookimpl",
    "traits_of",
    "validate_options",
    "vp_beta",
    "vp_t_from_log_alpha",
]
