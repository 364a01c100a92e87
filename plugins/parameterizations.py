"""The built-in network targets as registered parameterizations: eps, x0, v, score and velocity.

Each is a conversion object (`diffkit.Parameterization`) turning a network output into eps, x0,
score, v and the flow-matching velocity, and giving the regression target of an exact network.
A plugin adds its own the same way (`registrar.add_parameterization(name, cls)`); `diffkit train
--kind <name>` and a checkpoint's `kind` then accept it.
"""

from __future__ import annotations

from diffkit import (
    EpsPrediction,
    Registrar,
    ScorePrediction,
    VelocityPrediction,
    VPrediction,
    X0Prediction,
    hookimpl,
)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register eps, x0, v, score and the flow-matching velocity."""
    for cls in (EpsPrediction, X0Prediction, VPrediction, ScorePrediction, VelocityPrediction):
        registrar.add_parameterization(cls.name, cls)
