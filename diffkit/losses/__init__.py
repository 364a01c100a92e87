"""Training objectives of the score-based literature, as pure functions returning `(B,)` losses.

* `ncsn_dsm`: noise-conditional DSM over geometric levels, lambda(sigma) = sigma^2 (NCSN).
* `weighted_dsm`: continuous-time DSM, standard or likelihood weighting (score SDE).
* `l_simple`: DDPM's eps-MSE, or x0 / v targets.
* `vlb`, `vlb_terms`, `hybrid`: DDPM's variational bound and improved DDPM's hybrid objective.
* `flow_matching`: conditional flow matching, velocity targets at uniform or logit-normal times.
"""

from diffkit.core.model import split_learned_variance
from diffkit.losses.dsm import l_simple, ncsn_dsm, uniform_times, weighted_dsm
from diffkit.losses.flow import TIME_SAMPLINGS, flow_matching, flow_matching_times, logit_normal_times
from diffkit.losses.gaussian import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from diffkit.losses.vlb import DiscreteSchedule, hybrid, vlb, vlb_terms

__all__ = [
    "DiscreteSchedule",
    "TIME_SAMPLINGS",
    "discretized_gaussian_log_likelihood",
    "flow_matching",
    "flow_matching_times",
    "gaussian_log_likelihood",
    "hybrid",
    "l_simple",
    "logit_normal_times",
    "ncsn_dsm",
    "normal_kl",
    "split_learned_variance",
    "uniform_times",
    "vlb",
    "vlb_terms",
    "weighted_dsm",
]
