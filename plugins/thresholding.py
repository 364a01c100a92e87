"""x0 clipping and dynamic thresholding as model wrappers `clip` and `dynamic-threshold`.

Both bound the model's x0 prediction at every evaluation and recompute eps from it, so every
sampler steps with the bounded x0 (`diffkit.wrappers.thresholding`):

* `clip` (option `limit`, default 1): x0 clipped to [-limit, limit].
* `dynamic-threshold` (options `percentile`, default 0.995, and `max_value`, default none):
  Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3), per sample
  `s = max(quantile(|x0|, percentile), 1)` (capped at max_value), x0 <- clip(x0, -s, s) / s.

`diffkit sample --threshold clip --threshold-opt limit=1 ...`; with `ddim`, its option
`clipped_direction` picks the eps of the direction term (recomputed, or the network's).
"""

from __future__ import annotations

from diffkit import Registrar, hookimpl
from diffkit.wrappers import clip, dynamic_thresholding


@hookimpl
def diffkit_register(registrar: Registrar) -> None:
    """Register the model wrappers `clip` and `dynamic-threshold`."""
    registrar.add_model_wrapper("clip", clip, summary="Clip the x0 prediction to [-limit, limit].")
    registrar.add_model_wrapper(
        "dynamic-threshold",
        dynamic_thresholding,
        summary="Imagen's dynamic thresholding of x0 (Saharia et al. 2022).",
    )
