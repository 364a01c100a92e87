"""Controllable generation as model wrappers: guidance (cfg, classifier) and inverse problems.

Every sampler only calls `model.predict`, so each wrapper works with every sampler:
`cfg` (Ho & Salimans 2022), `classifier` (Dhariwal & Nichol 2021), `inpaint` and `colorize`
(Song et al. 2021, App. I.2 and I.3). See `diffkit.wrappers.guidance` and `diffkit.wrappers.inverse`.
"""

from __future__ import annotations

from diffkit import Registrar, hookimpl
from diffkit.wrappers import cfg, classifier, colorize, inpaint


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the model wrappers `cfg`, `classifier`, `inpaint` and `colorize`."""
    registrar.add_model_wrapper("cfg", cfg)
    registrar.add_model_wrapper("classifier", classifier)
    registrar.add_model_wrapper("inpaint", inpaint)
    registrar.add_model_wrapper("colorize", colorize)
