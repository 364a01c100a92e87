"""Exact Gaussian-mixture oracles (unconditional and class-conditional): the closed-form marginal
density, eps and samples of a mixture under any linear-Gaussian process."""

from diffkit.oracles.conditional import NULL_LABEL, class_log_posterior, conditional_eps
from diffkit.oracles.mixture import (
    component_log_joint,
    mixture_eps,
    mixture_log_prob,
    mixture_sample,
    perturbed_components,
)

__all__ = [
    "NULL_LABEL",
    "class_log_posterior",
    "component_log_joint",
    "conditional_eps",
    "mixture_eps",
    "mixture_log_prob",
    "mixture_sample",
    "perturbed_components",
]
