"""The programmatic entry points at their documented path (README: `from diffkit.api import ...`).

The implementation lives in `diffkit.run.api`; this module only re-exports its public names.
"""

from diffkit.run.api import Composition, SampleConfig, SampleRun, build_model, compose, sample, sampler_seed

__all__ = ["Composition", "SampleConfig", "SampleRun", "build_model", "compose", "sample", "sampler_seed"]
