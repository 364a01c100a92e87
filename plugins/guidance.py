"""Controllable generation as model wrappers: guidance methods and inverse problems.

Every sampler only calls `model.predict`, so each wrapper works with every sampler:
`cfg` (Ho & Salimans 2022), `cfg-rescale` (Lin et al. 2024), `interval` (Kynkaanniemi et al.
2024), `apg` (Sadat et al. 2024), `cfg-pp` (Chung et al. 2024; DDIM only), `autoguidance`
(Karras et al. 2024; needs a guide model), `classifier` (Dhariwal & Nichol 2021), `inpaint` and
`colorize` (Song et al. 2021, App. I.2 and I.3). See `diffkit.wrappers.guidance`,
`diffkit.wrappers.guidance_stage` and `diffkit.wrappers.inverse`.
"""

from __future__ import annotations

from diffkit import Registrar, hookimpl
from diffkit.wrappers import (
    apg,
    autoguidance,
    cfg,
    cfg_pp,
    cfg_rescale,
    classifier,
    colorize,
    inpaint,
    interval,
)


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the guidance wrappers and the inverse-problem wrappers `inpaint` and `colorize`."""
    registrar.add_model_wrapper("cfg", cfg)
    registrar.add_model_wrapper("cfg-rescale", cfg_rescale)
    registrar.add_model_wrapper("interval", interval)
    registrar.add_model_wrapper("apg", apg)
    registrar.add_model_wrapper("cfg-pp", cfg_pp)
    registrar.add_model_wrapper("autoguidance", autoguidance)
    registrar.add_model_wrapper("classifier", classifier)
    registrar.add_model_wrapper("inpaint", inpaint)
    registrar.add_model_wrapper("colorize", colorize)
