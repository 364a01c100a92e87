"""The contracts: noise processes, score models and parameterizations, grids, the sampler contract."""
