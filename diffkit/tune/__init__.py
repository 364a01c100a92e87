"""Time grids tuned to a model, solver and NFE budget (`diffkit tune-grid`)."""

from diffkit.tune.grid_search import GridShape, adam_search, coordinate_search
from diffkit.tune.objectives import OBJECTIVES, ode_reference, sliced_w2
from diffkit.tune.tuning import TuneConfig, TuneResult, grid_file, prepare, tune_grid

__all__ = [
    "OBJECTIVES",
    "GridShape",
    "TuneConfig",
    "TuneResult",
    "adam_search",
    "coordinate_search",
    "grid_file",
    "ode_reference",
    "prepare",
    "sliced_w2",
    "tune_grid",
]
